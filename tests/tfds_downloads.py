"""Puts test-written files where TFDS's download manager looks for finished downloads, so
real catalog builders prepare offline from data the test controls."""

import io
import zipfile

import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core.download import resource


def place(data_dir: str, name: str, url: str, content: bytes) -> epath.Path:
  """Registers `content` as the finished download of `url` for catalog dataset `name`
  and returns its path.

  The download dir holds files named after (url, registered checksum) plus an .INFO
  file; with both present TFDS reuses the file instead of fetching it.
  """
  info = tfds.builder(name, data_dir=data_dir).url_infos[url]
  dataset = name.split("/")[0]
  path = epath.Path(data_dir) / "downloads" / dataset / resource.get_dl_fname(url, info.checksum)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(content)
  resource.write_info_file(
    url=url, path=path, dataset_name=dataset, original_fname=info.filename, url_info=info
  )
  return path


def place_zip(data_dir: str, name: str, url: str, files: dict[str, str]) -> None:
  """Registers a zip of `files` (archive path -> text) as the download of `url`, and its
  extraction next to it.

  TFDS extracts archives with TensorFlow's file API, which gptjax does not install;
  with the extraction already in place TFDS reuses it, and the rest of the
  preparation (the builder's own parsing, ArrayRecord writing) is TensorFlow-free.
  """
  archive = place(data_dir, name, url, zipped(files))
  extracted = archive.parent.parent / "extracted" / f"ZIP.{archive.name}"
  for path, text in files.items():
    (extracted / path).parent.mkdir(parents=True, exist_ok=True)
    (extracted / path).write_text(text)


def zipped(files: dict[str, str]) -> bytes:
  """A zip archive holding `files` (archive path -> text)."""
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w") as archive:
    for path, text in files.items():
      archive.writestr(path, text)
  return buffer.getvalue()
