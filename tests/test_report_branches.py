"""The report on a cooldown sweep: branches grouped under their stable runs, fits on the branches.

Run directories are fabricated (as tests/test_report.py does) from the known law L(N, D):
3 sizes, each a stable run and 3 branches at D = 1, 2 and 4 x 1e7 tokens, whose final
losses lie on the law. The stable runs' losses lie well off it, so a fit that took them in
would miss the law's constants.
"""

import json
import os

import pytest
from test_report import LAW, _render, _write_run

from gptjax.scaling import branches, runs

SIZES = (1e5, 1e6, 1e7)
BUDGETS = (1e7, 2e7, 4e7)
TOKENS_PER_STEP = 1000


def _edit_summary(path, **fields):
  summary_path = os.path.join(path, "summary.json")
  summary = {**json.load(open(summary_path)), **fields}
  json.dump(summary, open(summary_path, "w"))


def _cooldown_sweep(root) -> str:
  members = {}
  for i, n in enumerate(SIZES):
    stable = os.path.join(root, f"s{i}-stable")
    _write_run(stable, n, 3.2e7)
    _edit_summary(stable, final_eval_loss=float(LAW.loss(n, 3.2e7)) + 0.5, step=32_000)
    members[f"s{i}-stable"] = {}
    for d in BUDGETS:
      name = f"s{i}-t{int(d)}"
      _write_run(os.path.join(root, name), n, d)
      point = int(0.8 * d) // TOKENS_PER_STEP
      _edit_summary(
        os.path.join(root, name), branch_from=f"/elsewhere/s{i}-stable@{point}", step=int(d) // 1000
      )
      members[name] = {}
  _write_run(os.path.join(root, "s0-cosine-t10000000"), SIZES[0], BUDGETS[0])
  members["s0-cosine-t10000000"] = {}
  json.dump(members, open(os.path.join(root, "sweep.json"), "w"))
  return str(root)


def test_branches_are_grouped_under_their_stable_run_with_the_separate_twin(tmp_path):
  sweep = runs.read_sweep(_cooldown_sweep(tmp_path / "cd"))
  groups = branches.groups(sweep.runs)
  assert [g.source for g in groups] == ["s0-stable", "s1-stable", "s2-stable"]
  assert [b.run.name for b in groups[0].branches] == [
    "s0-t10000000",
    "s0-t20000000",
    "s0-t40000000",
  ]
  assert [b.step for b in groups[0].branches] == [8000, 16000, 32000]
  assert groups[0].stable.name == "s0-stable"
  assert groups[0].branches[0].twin.name == "s0-cosine-t10000000"
  assert groups[1].branches[0].twin is None
  # Stable 32M once, then each branch's last 20%: 32M + 0.2 x 70M, against 70M separately.
  assert groups[0].tokens_trained == pytest.approx(3.2e7 + 0.2 * 7e7)
  assert groups[0].tokens_separate == 7e7
  assert branches.stable_runs(sweep.runs) == {"s0-stable", "s1-stable", "s2-stable"}


@pytest.mark.slow
def test_the_report_fits_l_of_n_and_d_on_the_branches_and_says_so(tmp_path):
  paths = _render(_cooldown_sweep(tmp_path / "cd"))
  fits = json.load(open(paths["fits"]))
  for name in ("E", "alpha", "beta"):
    assert fits["parametric"][name]["value"] == pytest.approx(getattr(LAW, name), rel=2e-2)
  assert fits["cooldown"]["fit_on"].startswith("cooldown branches")
  assert [g["stable"] for g in fits["cooldown"]["groups"]] == [
    "s0-stable",
    "s1-stable",
    "s2-stable",
  ]
  md = open(paths["md"]).read()
  assert "the fits are on the 9 cooldown branches alone" in md
  assert "as are the runs that are not branches: s0-cosine-t10000000" in md
  assert "## Cooldown branches" in md and "(34% saved)" in md
