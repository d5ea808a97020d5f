#!/usr/bin/env bash
# Thin wrapper: python -m gptjax.sweep, which trains a sweep's members here
# (--launcher=local, the default) or prints the TPU script or SLURM jobs that run them
# (--launcher=tpu|slurm with the flags of launch/tpu.sh or launch/slurm.sh; add --execute).
# Usage: launch/sweep.sh --config=experiments/SWEEP.py --workdir=SWEEP_DIR [flags]
set -euo pipefail
exec "${PYTHON:-python3}" -m gptjax.sweep "$@"
