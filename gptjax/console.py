"""What a run prints: gptjax's own lines, plainly, and library chatter only on request.

Every library here logs through absl (orbax prints about 48 INFO lines per
checkpoint, tfds a dozen per dataset), which buries the lines a researcher
reads. By default the console shows gptjax's records as bare messages
(warnings prefixed `warning:`) and other libraries' records only when CRITICAL:
an error they log (orbax logs each failed background write five times, asyncio
once more) reaches the user as the exception gptjax reports in one `error:` line.
`--verbosity=1` (absl's flag) restores absl's full format for everything.
"""

from __future__ import annotations

import logging
import os

from absl import logging as absl_logging

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class _OwnLines(logging.Filter):
  """Passes gptjax's records, and other records that are CRITICAL."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.pathname.startswith(_PACKAGE_DIR + os.sep) or record.levelno >= logging.CRITICAL


class _Plain(logging.Formatter):
  def format(self, record: logging.LogRecord) -> str:
    message = record.getMessage()
    if record.levelno >= logging.ERROR:
      return f"error: {message}"
    if record.levelno >= logging.WARNING:
      return f"warning: {message}"
    return message


def setup(verbosity: int) -> None:
  """Quiet, unprefixed console for verbosity <= 0; absl's own output otherwise."""
  if verbosity > 0:
    return
  handler = absl_logging.get_absl_handler()
  handler.setFormatter(_Plain())
  handler.addFilter(_OwnLines())
  try:
    import tensorflow_datasets as tfds  # its progress bars would interleave with log lines

    tfds.disable_progress_bar()
  except ImportError:
    pass
