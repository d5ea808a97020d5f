"""Where gptjax keeps derived artefacts (datasets, tokenizers, token caches).

Everything here is derived data that can be rebuilt, so it lives under one cache
root that users can relocate (e.g. to a bigger disk, or to a tmp dir in tests)
with a single environment variable instead of a flag per artefact.
"""

import os

CACHE_ENV_VAR = 'GPTJAX_CACHE'


def cache_root() -> str:
  """Returns `$GPTJAX_CACHE`, or `~/.cache/gptjax` when it is unset or empty."""
  root = os.environ.get(CACHE_ENV_VAR) or os.path.join('~', '.cache', 'gptjax')
  return os.path.expanduser(root)


def resolve_data_dir(data_dir: str) -> str:
  """Maps the `data.data_dir` setting to a directory; '' means the cache default."""
  if data_dir:
    return os.path.expanduser(data_dir)
  return os.path.join(cache_root(), 'tensorflow_datasets')


def atomic_write_bytes(path: str, payload: bytes) -> None:
  """Writes `payload` so that readers never see a half-written cache file.

  Caches are trusted once they exist, so a crash mid-write must not leave a
  truncated file behind: write to a sibling temp file, then rename.
  """
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp_path = f'{path}.tmp-{os.getpid()}'
  with open(tmp_path, 'wb') as f:
    f.write(payload)
  os.replace(tmp_path, path)
