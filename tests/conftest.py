"""Shared test setup: an isolated cache so tests never touch ~/.cache or the network."""

import os

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
