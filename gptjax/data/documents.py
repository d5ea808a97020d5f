"""Reads local files into documents: whole files, blank-line paragraphs or JSON lines.

Kept apart from TFDS so the reading rules (what a document is, how bad input is
reported) are plain functions that are easy to read and test. Invalid UTF-8 is
replaced with U+FFFD and counted rather than fatal: one stray byte in a large
scrape should not stop a run, but it should be visible in the log.
"""

import dataclasses
import json
import re
from collections.abc import Iterator

TXT_DOCUMENTS = ("file", "blank_lines")
_BLANK_LINES = re.compile(r"\n(?:[ \t\r\f\v]*\n)+")
_REPLACEMENT = "\ufffd"


@dataclasses.dataclass
class ReadStats:
  """Counts of repaired input, accumulated over every file read."""

  files_with_invalid_utf8: int = 0
  replaced_bytes: int = 0  # Invalid byte sequences, each replaced by one U+FFFD.


def decode(raw: bytes, stats: ReadStats) -> str:
  """UTF-8 text of `raw`, with invalid sequences replaced and counted in `stats`."""
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError:
    text = raw.decode("utf-8", errors="replace")
    # A U+FFFD already in the file is the valid sequence EF BF BD; the rest are ours.
    stats.files_with_invalid_utf8 += 1
    stats.replaced_bytes += text.count(_REPLACEMENT) - raw.count(_REPLACEMENT.encode())
    return text


def is_jsonl(path: str) -> bool:
  return path.endswith(".jsonl")


def read(path: str, txt_documents: str, jsonl_field: str, stats: ReadStats) -> Iterator[str]:
  """The documents of one file, in file order.

  `.jsonl` files yield the string `jsonl_field` of every non-blank line; other
  files yield the whole file (`txt_documents='file'`) or each blank-line
  separated paragraph (`'blank_lines'`), with empty documents dropped.
  """
  with open(path, "rb") as f:
    raw = f.read()
  if is_jsonl(path):
    yield from _jsonl_documents(path, raw, jsonl_field, stats)
  elif txt_documents == "file":
    if raw:
      yield decode(raw, stats)
  else:
    for paragraph in _BLANK_LINES.split(decode(raw, stats)):
      if paragraph.strip():
        yield paragraph


def _jsonl_documents(path: str, raw: bytes, field: str, stats: ReadStats) -> Iterator[str]:
  for number, line in enumerate(raw.split(b"\n"), start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(decode(line, stats))
    except json.JSONDecodeError as e:
      raise ValueError(
        f"{path}:{number}: not a JSON object ({e.msg}); every "
        "non-blank line of a .jsonl file must be one JSON object"
      ) from e
    if not isinstance(record, dict) or field not in record:
      keys = sorted(record) if isinstance(record, dict) else type(record).__name__
      raise ValueError(
        f"{path}:{number}: no field {field!r} (found {keys}); set "
        "data.jsonl_field to the field that holds the text"
      )
    text = record[field]
    if not isinstance(text, str):
      raise ValueError(
        f"{path}:{number}: field {field!r} is a "
        f"{type(text).__name__}, not a string; set data.jsonl_field "
        "to a text field"
      )
    yield text
