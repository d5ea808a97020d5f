"""`python -m gptjax.report DIR` on run directories fabricated from a known scaling law.

The runs are written by hand through the run-directory contract (summary.json,
metrics.jsonl, sweep.json), as a run from another codebase would be, with losses
from L(N, D) = E + A/N^alpha + B/D^beta: so the report's fits have a true answer.
"""

import json
import os
import pathlib

import numpy as np
import pytest

from gptjax import report
from gptjax.scaling.laws import ParametricLaw

LAW = ParametricLaw(E=1.7, A=400.0, B=410.0, alpha=0.34, beta=0.28)
EMBEDDING = 50_000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_run(path, n: float, d: float, evals: int = 4, status: str = "completed") -> None:
  """A run of N params on D tokens whose loss at t tokens is LAW.loss(n, t), with C = 6 N D."""
  os.makedirs(path)
  rows = []
  for t in np.linspace(d / 8, d, 8):
    rows.append(
      {
        "step": int(t // 1000),
        "tokens": int(t),
        "flops": 6 * n * t,
        "train_loss": float(LAW.loss(n, t)) * 1.01,
        "mfu": 0.3,
      }
    )
  for t in np.linspace(d / evals, d, evals):
    rows.append(
      {
        "step": int(t // 1000),
        "tokens": int(t),
        "flops": 6 * n * t,
        "eval_loss": float(LAW.loss(n, t)),
        "eval_loss_sem": 0.002,
      }
    )
  rows.sort(key=lambda r: r["tokens"])
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  summary = {
    "n_params": int(n) + EMBEDDING,
    "n_params_non_embedding": int(n),
    "n_layer": 2,
    "d_model": 128,
    "n_head": 2,
    "seq_len": 256,
    "vocab_size": 257,
    "tokens": int(d),
    "flops": 6 * int(n) * int(d),
    "final_train_loss": float(LAW.loss(n, d)) * 1.01,
    "final_eval_loss": float(LAW.loss(n, d)),
    "wall_s": 60.0,
    "status": status,
  }
  with open(os.path.join(path, "summary.json"), "w") as f:
    json.dump(summary, f)


def _sweep(root, members: dict[str, tuple[float, float]], not_started=()) -> str:
  os.makedirs(root)
  for name, (n, d) in members.items():
    _write_run(os.path.join(root, name), n, d)
  with open(os.path.join(root, "sweep.json"), "w") as f:
    json.dump({name: {} for name in [*members, *not_started]}, f)
  return str(root)


def _render(run_dir, out=None) -> dict:
  paths = report.run_render(
    report.parser().parse_args(
      ["render", run_dir, "--bootstrap", "50", *(["--out", out] if out else [])]
    )
  )
  for path in paths.values():
    assert os.path.getsize(path) > 0, path
  return paths


@pytest.mark.slow
def test_size_ladder_report_recovers_alpha_and_checks_the_largest_model(tmp_path):
  ns = [5e4, 1.5e5, 4e5, 1.2e6, 3.5e6]
  d = 3e6
  root = _sweep(
    tmp_path / "ladder", {f"m{i}": (n, d) for i, n in enumerate(ns)}, not_started=["m5"]
  )
  paths = _render(root)
  assert {"fits", "md", "html", "curves_tokens", "curves_flops", "loss_vs_n", "residuals"} <= set(
    paths
  )
  fits = json.load(open(paths["fits"]))
  # At fixed D the law is E' + A N^-alpha with E' = E + B / D^beta: exactly the saturating form.
  assert fits["loss_vs_n"]["alpha"]["value"] == pytest.approx(LAW.alpha, abs=1e-3)
  assert fits["loss_vs_n"]["E"]["value"] == pytest.approx(LAW.E + LAW.B / d**LAW.beta, rel=1e-3)
  lo, hi = fits["loss_vs_n"]["alpha"]["ci95"]
  assert lo <= LAW.alpha <= hi
  assert fits["loss_vs_n"]["E_identified"]
  assert abs(fits["extrapolation"]["saturating"]["relative_error"]) < 1e-3
  assert (
    abs(fits["extrapolation"]["kaplan"]["relative_error"]) > 1e-3
  )  # E > 0: a pure power law bends wrong
  assert fits["extrapolation"]["held_out_n"] == max(ns)
  assert "isoflop" not in fits and any("IsoFLOP" in s for s in fits["skipped"])
  md = open(paths["md"]).read()
  assert "not started: m5" in md and "![" in md and "| m4 |" in md
  html = open(paths["html"]).read()
  assert html.count("data:image/png;base64,") == md.count("![")


@pytest.mark.slow
def test_a_diverged_member_is_named_and_left_out_of_the_fits(tmp_path):
  ns = [5e4, 1.5e5, 4e5, 1.2e6]
  root = _sweep(tmp_path / "ladder", {f"m{i}": (n, 3e6) for i, n in enumerate(ns)})
  diverged = os.path.join(root, "m4")
  _write_run(diverged, 3.5e6, 3e6)
  with open(os.path.join(diverged, "metrics.jsonl"), "a") as f:  # as training writes it
    f.write(
      json.dumps(
        {
          "step": 3001,
          "tokens": 3_001_000,
          "flops": 1.0,
          "train_loss": None,
          "grad_norm": None,
          "mfu": None,
          "nonfinite": ["train_loss"],
        }
      )
      + "\n"
    )
  summary_path = os.path.join(diverged, "summary.json")
  summary = {
    **json.load(open(summary_path)),
    "status": "diverged",
    "final_train_loss": None,
    "final_eval_loss": None,
  }
  json.dump(summary, open(summary_path, "w"))
  json.dump({f"m{i}": {} for i in range(5)}, open(os.path.join(root, "sweep.json"), "w"))
  paths = _render(root)
  md = open(paths["md"]).read()
  assert "4 completed; diverged: m4" in md and "| m4 |" in md
  assert json.load(open(paths["fits"]))["source"]["runs"] == [f"m{i}" for i in range(5)]
  assert any("not completed" in s for s in json.load(open(paths["fits"]))["skipped"])


@pytest.mark.slow
def test_isoflop_report_finds_the_frontier_exponent_of_the_law(tmp_path):
  a_true = LAW.beta / (LAW.alpha + LAW.beta)
  members = {}
  for c in (1e17, 1e18, 1e19):
    n_opt = LAW.frontier(c).n_opt
    for k, scale in enumerate((0.25, 0.5, 1.0, 2.0, 4.0)):
      n = float(n_opt * scale)
      members[f"c{c:.0e}-{k}"] = (n, c / (6 * n))
  for k, scale in enumerate((4.0, 8.0, 16.0)):  # every size above the optimum: not bracketed
    n = float(LAW.frontier(1e16).n_opt * scale)
    members[f"c1e16-{k}"] = (n, 1e16 / (6 * n))
  root = _sweep(tmp_path / "iso", members)
  out = str(tmp_path / "report")
  paths = _render(root, out=out)
  assert {"isoflop", "frontier"} <= set(paths) and all(p.startswith(out) for p in paths.values())
  fits = json.load(open(paths["fits"]))
  # A parabola in log N approximates the true profile; the vertex lands within a few percent.
  assert fits["isoflop"]["a"]["value"] == pytest.approx(a_true, abs=0.02)
  for minimum in fits["isoflop"]["minima"]:
    assert minimum["n_opt"] == pytest.approx(float(LAW.frontier(minimum["flops"]).n_opt), rel=0.1)
  assert fits["parametric"]["alpha"]["value"] == pytest.approx(LAW.alpha, abs=0.02)
  assert "loss_vs_n" not in fits  # D varies independently of N: no single L(N) curve
  assert [m["flops"] for m in fits["isoflop"]["minima"]] == pytest.approx([1e17, 1e18, 1e19])
  assert any(
    "C=1e+16 left out of Approach 2" in s and "beyond the smallest size" in s
    for s in fits["skipped"]
  )


def test_only_reports_the_matching_members(tmp_path, capsys):
  root = _sweep(
    tmp_path / "two", {"a-l1-x": (1e5, 1e6), "a-l2-x": (2e5, 1e6), "b-l1-x": (4e5, 1e6)}
  )
  paths = report.run_render(
    report.parser().parse_args(
      ["render", root, "--only", "*-l1-*", "--bootstrap", "5", "--out", str(tmp_path / "r")]
    )
  )
  assert json.load(open(paths["fits"]))["source"]["runs"] == ["a-l1-x", "b-l1-x"]
  assert "members matching `*-l1-*`: 2 runs" in open(paths["md"]).read()
  with pytest.raises(SystemExit):
    report.main([root, "--only", "*-l9-*"])
  assert "--only=*-l9-*: matches none of the members" in capsys.readouterr().err


def test_report_errors_name_the_directory(tmp_path, capsys):
  with pytest.raises(SystemExit):
    report.main([str(tmp_path / "missing")])
  assert "no such directory" in capsys.readouterr().err
  os.makedirs(tmp_path / "empty")
  with pytest.raises(SystemExit):
    report.main([str(tmp_path / "empty")])
  assert "no run directories with a summary.json" in capsys.readouterr().err


@pytest.mark.slow
def test_a_sweep_on_gcs_is_reported_in_place(tmp_path, gcs_bucket):
  """The same fabricated ladder uploaded to a local GCS server renders the same fits."""
  from etils import epath

  local = _sweep(
    tmp_path / "ladder", {f"m{i}": (n, 3e6) for i, n in enumerate([5e4, 1.5e5, 4e5, 1.2e6, 3.5e6])}
  )
  remote = epath.Path(f"gs://{gcs_bucket}/sweeps/ladder")
  for path in pathlib.Path(local).rglob("*.json*"):
    target = remote / str(path.relative_to(local))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(path.read_text())
  with pytest.raises(SystemExit):
    report.main([str(remote)])  # the report is written locally: --out is required
  fits = json.load(open(_render(str(remote), out=str(tmp_path / "from_gcs"))["fits"]))
  assert fits["loss_vs_n"]["alpha"]["value"] == pytest.approx(
    json.load(open(_render(local)["fits"]))["loss_vs_n"]["alpha"]["value"], rel=1e-9
  )


@pytest.mark.slow
def test_finetune_ladder_members_and_report_place_accuracy_at_the_sources_compute(tmp_path):
  """`experiments/finetune_ladder.py:SWEEP` makes one member per completed source run (its
  shape, its checkpoint); the report puts each fine-tuned run at its source's FLOPs at the
  step it started from, and keeps task runs out of the loss fits."""
  from gptjax import config as config_lib
  from gptjax import sweep
  from gptjax.scaling import sizes

  root = _sweep(tmp_path / "pre", {"small": (1e5, 3e6), "large": (4e5, 3e6)}, not_started=["x"])
  for name, d_model in (("small", 64), ("large", 128)):
    c = config_lib.base_config()
    c.model.update(d_model=d_model, d_ff=4 * d_model, n_head=2)
    pathlib.Path(root, name, "config.json").write_text(c.to_json())
  members = sweep.load_sweep(f"{ROOT}/experiments/finetune_ladder.py:{root}")
  assert members == sizes.finetune_family(root)
  assert list(members) == ["small", "large"]  # sweep.json's order; 'x' never started
  assert members["large"]["train.init_from"] == f"run:{root}/large"
  assert (members["large"]["model.d_model"], members["large"]["model.d_ff"]) == (128, 512)

  tuned = tmp_path / "tuned"
  tuned.mkdir()
  for name, accuracy in (("small", 0.7), ("large", 0.9)):
    source_flops = [r["flops"] for r in map(json.loads, open(f"{root}/{name}/metrics.jsonl"))]
    step = [r["step"] for r in map(json.loads, open(f"{root}/{name}/metrics.jsonl"))][3]
    (tuned / name).mkdir()
    summary = {
      **json.load(open(f"{root}/{name}/summary.json")),
      "init_from": f"run:{root}/{name}@{step}",
      "final_eval_loss": 0.5,
      "final_eval_accuracy": accuracy,
      "final_eval_accuracy_se": 0.02,
    }
    (tuned / name / "summary.json").write_text(json.dumps(summary))
    assert source_flops[3] < summary["flops"]  # an earlier checkpoint than the source's end
  paths = _render(str(tuned))
  fits = json.load(open(paths["fits"]))
  by_run = {p["run"]: p for p in fits["finetuned"]}
  for name in ("small", "large"):
    rows = [json.loads(line) for line in open(f"{root}/{name}/metrics.jsonl")]
    assert by_run[name]["source_flops"] == rows[3]["flops"]
    assert (
      by_run[name]["source_loss"]
      == json.load(open(f"{root}/{name}/summary.json"))["final_eval_loss"]
    )
  assert (by_run["small"]["accuracy"], by_run["large"]["accuracy"]) == (0.7, 0.9)
  assert "finetuned" in paths and "loss_vs_n" not in fits and "curves_tokens" not in paths
  assert "Fine-tuning over pretrained sizes" in open(paths["md"]).read()


@pytest.mark.slow
def test_reports_render_where_a_fit_or_the_fitted_runs_are_missing(tmp_path):
  """Approach 3 alone (an N x D grid with one eval per run: no IsoFLOP profile, no envelope)
  draws its frontier over the runs' compute; a sweep whose every run is a distilled student
  (none to fit) still renders, without the runs section."""
  grid = tmp_path / "grid"
  members = {
    f"m{i}": (n, d)
    for i, (n, d) in enumerate((n, d) for n in (5e4, 2e5, 8e5) for d in (2e6, 6e6, 1.8e7))
  }
  for name, (n, d) in members.items():
    _write_run(str(grid / name), n, d, evals=1)
  (grid / "sweep.json").write_text(json.dumps({name: {} for name in members}))
  paths = _render(str(grid))
  fits = json.load(open(paths["fits"]))
  assert "parametric" in fits and "isoflop" not in fits and "frontier" in paths

  students = _sweep(tmp_path / "students", {"s0": (5e4, 2e6), "s1": (2e5, 2e6)})
  for name in ("s0", "s1"):
    path = os.path.join(students, name, "summary.json")
    summary = json.load(open(path))
    json.dump({**summary, "teacher": "run:/elsewhere/t@100"}, open(path, "w"))
  paths = _render(students)
  assert "## Runs" not in open(paths["md"]).read()


@pytest.mark.slow
def test_a_too_noisy_isoflop_bootstrap_is_a_skipped_fit_not_a_crash(tmp_path):
  """Two budgets of four sizes whose losses barely curve under a 0.3 standard error: most
  bootstrap resamples give no convex parabola, so Approach 2 is listed as not fitted."""
  root = tmp_path / "iso"
  for c in (1e12, 1e13):
    for k, n in enumerate((1e4, 3e4, 1e5, 3e5)):
      run = root / f"c{int(np.log10(c))}-n{k}"
      run.mkdir(parents=True)
      loss = 3.0 - 0.1 * np.log10(c) + 0.01 * (np.log(n) - np.log(5e4)) ** 2
      d = c / (6 * n)
      rows = [
        {"step": 1, "tokens": int(d / 2), "flops": c / 2, "eval_loss": loss + 0.2},
        {"step": 2, "tokens": int(d), "flops": c, "eval_loss": loss, "eval_loss_sem": 0.3},
      ]
      (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
      summary = {"n_params_non_embedding": int(n), "n_params": int(n * 1.2), "tokens": int(d)}
      summary.update(flops=c, final_eval_loss=loss, status="completed", wall_s=1.0, step=2)
      (run / "summary.json").write_text(json.dumps(summary))
  (root / "sweep.json").write_text(json.dumps({p.name: {} for p in root.iterdir()}))
  fits = json.load(open(_render(str(root))["fits"]))
  assert "isoflop" not in fits
  assert any(s.startswith("IsoFLOP profiles (Approach 2): ") for s in fits["skipped"])


def test_sft_runs_are_fine_tuning_runs_and_stay_out_of_the_loss_fits(tmp_path):
  """An SFT run's eval loss is over response tokens: not a point of L(N) or L(N, D)."""
  from gptjax.scaling import runs

  _write_run(str(tmp_path / "sft"), 1e5, 3e6)
  path = tmp_path / "sft" / "summary.json"
  path.write_text(json.dumps({**json.loads(path.read_text()), "final_eval_targets": 900}))
  assert runs.read_run(str(tmp_path / "sft")).task
  _write_run(str(tmp_path / "lm"), 1e5, 3e6)
  assert not runs.read_run(str(tmp_path / "lm")).task
