"""Shared test setup: 8 CPU devices and an isolated cache.

Every test process sees 8 host-platform devices, so training tests run sharded
(data-parallel by default) and the parallelism tests can build any 8-device mesh.
This must happen before jax is imported, which is why it lives here.
"""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
# gcsfs reads this on import: its zonal/HNS bucket probe talks gRPC, which the local GCS
# server of tests/gcs_emulator.py does not, and waits a minute per bucket before giving up.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

import pytest


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
  previous = os.environ.get("GPTJAX_CACHE")
  os.environ["GPTJAX_CACHE"] = str(tmp_path_factory.mktemp("gptjax_cache"))
  yield os.environ["GPTJAX_CACHE"]
  if previous is None:
    os.environ.pop("GPTJAX_CACHE", None)
  else:
    os.environ["GPTJAX_CACHE"] = previous


@pytest.fixture(scope="session")
def gcs_bucket(tmp_path_factory):
  """The name of a bucket on a local GCS server that gs:// URLs reach for the whole session.

  Session-wide: one server is enough, and epath keeps the first gcsfs filesystem, with its
  credentials, for the whole process.
  """
  import gcs_emulator

  with gcs_emulator.serving("gptjax-test", str(tmp_path_factory.mktemp("gcloud"))):
    yield "gptjax-test"
