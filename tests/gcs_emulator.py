"""A GCS server on localhost (gcp-storage-emulator) that every gs:// client in a run reaches.

gptjax's gs:// I/O goes through three clients, each pointed here by its own setting:
gcsfs (etils.epath) and google-cloud-storage (orbax's checkpoint listing) by
STORAGE_EMULATOR_HOST, and TensorStore (orbax's arrays) by TENSORSTORE_GCS_HTTP_URL.
Credentials are anonymous or a fixed test token, and the metadata-server addresses
point at a closed local port, so no request leaves this machine.

The emulator leaves out two things GCS does that gptjax relies on, so `serving` adds
them: an object's bytes come with its generation (x-goog-generation), which
TensorStore's conditional writes of an OCDBT manifest compare against; and an upload
with ifGenerationMatch is refused (412) unless the object is at that generation (0:
absent), which gptjax.rundir.RunLock creates and takes over its lock with. The server
answers one request at a time, so the check and the write are one step, as in GCS.
Deletes still ignore their preconditions.
"""

import contextlib
import http
import socket
from collections.abc import Callable, Iterator

import pytest
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects
from gcp_storage_emulator.server import create_server

_download = objects.download
_UPLOADS = ("_media_upload", "_multipart_upload")  # what objects.insert calls


def _download_with_generation(request, response, storage, *args, **kwargs):
  _download(request, response, storage, *args, **kwargs)
  if response.status.value < 300:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    response["x-goog-generation"] = obj["generation"]


def _conditional(upload: Callable) -> Callable:
  def conditional_upload(request, response, storage):
    wanted = request.query.get("ifGenerationMatch")
    if wanted:
      name = request.query["name"][0] if "name" in request.query else request.data["meta"]["name"]
      try:
        generation = storage.get_file_obj(request.params["bucket_name"], name)["generation"]
      except NotFound:
        generation = "0"
      if generation != wanted[0]:
        response.status = http.HTTPStatus.PRECONDITION_FAILED
        response.json({"error": {"code": 412, "message": "conditionNotMet"}})
        return None
    return upload(request, response, storage)

  return conditional_upload


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def serving(bucket: str, config_dir: str) -> Iterator[None]:
  """Serves an in-memory GCS holding `bucket`, with the environment pointing gs:// at it."""
  port = _free_port()
  server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
  url = f"http://127.0.0.1:{port}"
  closed = "127.0.0.1:9"
  with pytest.MonkeyPatch.context() as env:
    for name, value in {
      "STORAGE_EMULATOR_HOST": url,
      "TENSORSTORE_GCS_HTTP_URL": url,
      "FSSPEC_GCS_TOKEN": "anon",
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",
      "GOOGLE_CLOUD_PROJECT": "test",
      "CLOUDSDK_CONFIG": config_dir,
      "GCE_METADATA_ROOT": closed,
      "GCE_METADATA_HOST": closed,
      "GCE_METADATA_IP": closed,
      "NO_GCE_CHECK": "true",
    }.items():
      env.setenv(name, value)
    env.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    env.setattr(objects, "download", _download_with_generation)  # what objects.get calls
    for upload in _UPLOADS:
      env.setattr(objects, upload, _conditional(getattr(objects, upload)))
    server.start()
    try:
      yield
    finally:
      server.stop()
