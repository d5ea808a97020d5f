#!/usr/bin/env bash
# Thin wrapper: python -m gptjax.launch local, which builds and checks every command.
# Usage: launch/local.sh --config=FILE --workdir=DIR [flags] [--config.x=v ...]
# Runs now; see python -m gptjax.launch local --help.
set -euo pipefail
exec "${PYTHON:-python3}" -m gptjax.launch local "$@"
