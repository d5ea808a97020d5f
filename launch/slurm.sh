#!/usr/bin/env bash
# Thin wrapper: python -m gptjax.launch slurm, which builds and checks every command.
# Usage: launch/slurm.sh --config=FILE --workdir=DIR [flags] [--config.x=v ...]
# Prints what it would do; add --execute to do it (it spends money).
set -euo pipefail
exec "${PYTHON:-python3}" -m gptjax.launch slurm "$@"
