"""The host runs a bounded number of steps ahead (gptjax.in_flight), which keeps XLA:CPU's
multi-device collectives from deadlocking."""

import json
import os
import subprocess

import jax
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


def _slow_step(x):
  """A step long enough (milliseconds) that dispatches queue up behind it."""
  return jax.lax.fori_loop(0, 40, lambda _, y: jnp.tanh(y @ y), x)


@pytest.mark.parametrize("ahead_s, limit", [(1e-6, 2), (1e6, 8)])
def test_the_queue_holds_about_ahead_s_of_steps_within_2_and_8(ahead_s, limit):
  """With the queue full, waits come one step apart: 1 microsecond of work ahead is under
  any step (the queue shrinks to 2, the next step behind the running one); 11 days of
  work ahead is the cap of 8."""
  step = jax.jit(_slow_step)
  x = jnp.eye(256) * 0.5
  queue = in_flight.InFlight(ahead_s=ahead_s)
  for _ in range(16):
    x = step(x)
    queue.add(x)
    assert len(queue) <= 8
  assert queue.limit == limit
  assert len(queue) == limit


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
