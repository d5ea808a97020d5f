"""Shared test setup: 8 CPU devices and an isolated cache.

Every test process sees 8 host-platform devices, so training tests run sharded
(data-parallel by default) and the parallelism tests can build any 8-device mesh.
This must happen before jax is imported, which is why it lives here.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()

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
