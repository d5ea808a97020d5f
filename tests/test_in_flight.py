"""The host runs a bounded number of steps ahead (gptjax.in_flight), which keeps XLA:CPU's
multi-device collectives from deadlocking."""

import json
import os
import subprocess

import jax.numpy as jnp
import pytest
from test_train import cli

from gptjax import in_flight

# XLA:CPU's rendezvous gives up after 10 s instead of 40, so a deadlock fails the test fast.
_TWO_DEVICES = (
  "--xla_force_host_platform_device_count=2"
  " --xla_cpu_collective_call_warn_stuck_timeout_seconds=2"
  " --xla_cpu_collective_call_terminate_timeout_seconds=10"
  " --xla_cpu_collective_timeout_seconds=10"
)


def test_a_limit_below_one_is_refused():
  with pytest.raises(ValueError, match="limit=0: use 1 or more"):
    in_flight.InFlight(0)


def test_at_most_limit_dispatches_are_kept_and_the_oldest_awaited():
  queue = in_flight.InFlight(3)
  outputs = [jnp.arange(4) * i for i in range(10)]
  for i, output in enumerate(outputs):
    queue.add(output)
    assert len(queue) == min(i + 1, 3)


@pytest.mark.slow
def test_a_long_step_loop_on_two_cpu_devices_finishes(tmp_path):
  """300 data-parallel steps of a tiny model read once: unbounded, the host queued more than
  32 steps and a device waited in the gradient all-reduce for good (XLA aborted the run)."""
  workdir = tmp_path / "run"
  overrides = {
    "train.steps": 300,
    "train.log_every": 300,
    "train.checkpoint_every": 300,
    "train.num_samples": 0,
    "data.tokenizer": "bytes",
    # Steps long enough (tens of ms) for the host to get ahead of the devices.
    "model.n_layer": 4,
    "model.d_model": 128,
    "model.n_head": 4,
    "model.d_ff": 512,
    "model.seq_len": 64,
  }
  result = subprocess.run(
    cli(workdir, **overrides),
    env={**os.environ, "XLA_FLAGS": _TWO_DEVICES},
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert (summary["status"], summary["tokens"]) == ("completed", 300 * 8 * 64)
