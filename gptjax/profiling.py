"""`train.profile_steps = "A:B"`: a jax.profiler trace of training steps A..B-1.

nanodo-style: a few steps of a real run, not a separate benchmark, so the trace shows
the step as the run executes it (input pipeline, dispatch, device time). The trace
goes to WORKDIR/profile; open it with TensorBoard's profile plugin or Perfetto.
"""

from __future__ import annotations

import os

import jax
from absl import logging

from gptjax.config import profile_steps


class StepProfiler:
  """Traces steps A..B-1: from when step A-1 has finished to when step B-1 has.

  Waiting for the state at those two points is the only host sync it adds.
  """

  def __init__(self, spec: str, workdir: str):
    self._steps = profile_steps(spec)
    self._dir = os.path.join(workdir, "profile")
    self._active = False

  def before(self, step: int, state: object) -> None:
    """Steps are dispatched ahead of the device, so the trace starts only once the
    steps before A have finished: it then holds steps A..B-1 and nothing else."""
    if self._steps and step == self._steps[0]:
      jax.block_until_ready(state)
      jax.profiler.start_trace(self._dir, create_perfetto_trace=True)
      self._active = True

  def after(self, step: int, state: object) -> None:
    """`step` is the number of steps done, so the trace stops after step B-1."""
    if self._active and step >= self._steps[1]:
      self.stop(state)

  def stop(self, state: object) -> None:
    if self._active:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self._active = False
      logging.info(
        "profile of steps %d to %d written to %s", self._steps[0], self._steps[1] - 1, self._dir
      )
