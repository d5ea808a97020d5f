"""Reading a run's metrics.jsonl and comparing two runs row by row (shared by test files)."""

import json
import os

import numpy as np

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
