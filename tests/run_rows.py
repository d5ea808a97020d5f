"""Reading a run's metrics.jsonl and comparing two runs row by row (shared by test files)."""

import json
import os

import jax
import numpy as np

import gptjax

TIMING_FIELDS = {"step_time_s", "tokens_per_s", "mfu"}  # wall-clock, so never equal across runs


def rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def assert_same_curve(actual, expected, rtol=1e-5):
  """Same steps, same fields, and every non-timing value within rtol."""
  assert [r["step"] for r in actual] == [r["step"] for r in expected]
  for a, e in zip(actual, expected):
    a = {k: v for k, v in a.items() if k not in TIMING_FIELDS}
    e = {k: v for k, v in e.items() if k not in TIMING_FIELDS}
    assert a.keys() == e.keys()
    for key in a:
      np.testing.assert_allclose(a[key], e[key], rtol=rtol, err_msg=f"step {a['step']} {key}")


def assert_same_run(actual_dir, expected_dir):
  """Bit for bit the same run: every row's values and the final parameters."""
  assert_same_curve(rows(actual_dir), rows(expected_dir), rtol=0)
  final = [jax.device_get(gptjax.load(d).params) for d in (actual_dir, expected_dir)]
  for a, b in zip(jax.tree.leaves(final[0]), jax.tree.leaves(final[1])):
    np.testing.assert_array_equal(a, b)
