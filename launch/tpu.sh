#!/usr/bin/env bash
# Thin wrapper: python -m gptjax.launch tpu, which builds and checks every command.
# Usage: launch/tpu.sh {up,create,setup,run,logs,status,relaunch,delete} --config=FILE --workdir=DIR [flags] [--config.x=v ...]
# Prints what it would do; add --execute to do it (it spends money).
set -euo pipefail
exec "${PYTHON:-python3}" -m gptjax.launch tpu "$@"
