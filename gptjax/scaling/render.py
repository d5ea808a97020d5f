"""Writes a sweep's report: report.md, self-contained report.html, the PNG plots and fits.json."""

from __future__ import annotations

import datetime
import json
import math
import os

import numpy as np

from gptjax.scaling import analysis, branches, distillation, downstream, finetuned, plots
from gptjax.scaling.analysis import Analysis
from gptjax.scaling.document import Document
from gptjax.scaling.runs import Sweep

CONVENTIONS = [
  "N is Kaplan's non-embedding parameter count (`n_params_non_embedding`: without the token "
  "and position embeddings); the table also lists all parameters, the tied embedding counted once.",
  "D is training tokens (`tokens` in summary.json), counted at global-batch scale.",
  "C is training FLOPs as each run recorded them (`flops`): per token 6 x every matmul "
  "parameter (lm head included) + 6 x n_layer x d_model x seq_len for causal attention, the "
  "MFU convention of DESIGN §6. IsoFLOP budgets are groups of runs within 10% of each other's C.",
  "Approach 3's frontier uses C = 6 N D (Hoffmann et al. 2022, eq. 4), which undercounts "
  "small models whose attention and lm head are a large share of their FLOPs.",
  "Loss is the final eval loss in nats per token on the fixed validation set; its standard "
  "error treats validation documents as clusters (a document's tokens are not independent "
  "samples). All runs share that set, so their errors are correlated "
  "and intervals that treat them as independent are conservative.",
  "Intervals are 95% bootstrap percentile intervals (resamples and method in fits.json).",
  "MFU is each run's mean over its train rows; the peak it divides by is named in that run's log "
  "(on CPU: a matmul rate measured once per host and cached).",
]


def _num(value: float, digits: int = 4) -> str:
  return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def _ci(values: list[float]) -> str:
  return f"[{_num(values[0])}, {_num(values[1])}]"


def _not_completed(runs: list) -> dict[str, list[str]]:
  """Runs by status other than completed (diverged, failed, running), so none goes unnamed."""
  out: dict[str, list[str]] = {}
  for r in runs:
    if not r.completed:
      out.setdefault(r.status, []).append(r.name)
  return out


def _runs_table(doc: Document, a: Analysis) -> None:
  rows = []
  for r in a.runs:
    loss = _num(r.final_eval_loss)
    if math.isfinite(r.final_eval_sem):
      loss += f" ± {r.final_eval_sem:.3f}"
    rows.append(
      [
        r.name,
        f"{r.n_params:,}",
        f"{r.n:,}",
        f"{r.tokens:,}",
        f"{r.flops:.3g}",
        loss,
        _num(r.wall_s / 60, 3),
        "n/a" if math.isnan(r.mfu) else f"{100 * r.mfu:.1f}%",
        r.status,
      ]
    )
  doc.table(
    [
      "run",
      "params",
      "N (non-emb.)",
      "tokens D",
      "FLOPs C",
      "final eval loss ± s.e.",
      "wall (min)",
      "MFU",
      "status",
    ],
    rows,
  )


def _headline(fits: dict) -> list[str]:
  lines = []
  if "loss_vs_n" in fits:
    f = fits["loss_vs_n"]
    k = f["kaplan"]
    lines.append(
      f"L(N) = (N_c / N)^α_N (Kaplan et al. 2020): α_N = {k['alpha_N']['value']:.3f} "
      f"{_ci(k['alpha_N']['ci95'])}."
    )
    if f["E_identified"]:
      lines.append(
        f"L(N) = E + A N^-α: α = {f['alpha']['value']:.3f} {_ci(f['alpha']['ci95'])}, "
        f"E = {f['E']['value']:.3f} {_ci(f['E']['ci95'])} nats/token."
      )
    else:
      lines.append(
        f"L(N) = E + A N^-α: E is not identified by these sizes (its interval "
        f"{_ci(f['E']['ci95'])} reaches 0, where the law is Kaplan's), so α = "
        f"{f['alpha']['value']:.3f} {_ci(f['alpha']['ci95'])} is not a useful summary."
      )
  if "extrapolation" in fits:
    e = fits["extrapolation"]
    parts = [
      f"{law} predicts {e[key]['predicted_loss']:.4f} {_ci(e[key]['predicted_ci95'])} "
      f"({100 * e[key]['relative_error']:+.2f}%)"
      for key, law in (("kaplan", "(N_c/N)^α_N"), ("saturating", "E + A N^-α"))
    ]
    lines.append(
      f"Extrapolation: fitted without the largest model (N = {e['held_out_n']:.3g}, "
      f"final loss {e['observed_loss']:.4f}), " + "; ".join(parts) + "."
    )
  if "isoflop" in fits:
    f = fits["isoflop"]
    lines.append(
      f"IsoFLOP (Approach 2): N_opt ∝ C^a with a = {f['a']['value']:.3f} "
      f"{_ci(f['a']['ci95'])}; D_opt ∝ C^b with b = {f['b']['value']:.3f} "
      f"{_ci(f['b']['ci95'])}."
    )
  if "envelope" in fits and math.isfinite(fits["envelope"]["a"]["value"]):
    f = fits["envelope"]
    lines.append(
      f"Compute envelope (Approach 1): N_opt ∝ C^{f['a']['value']:.3f} "
      f"{_ci(f['a']['ci95'])}, D_opt ∝ C^{f['b']['value']:.3f} {_ci(f['b']['ci95'])}."
    )
  if "parametric" in fits:
    f = fits["parametric"]
    lines.append(
      f"L(N, D) (Approach 3): α = {f['alpha']['value']:.3f} {_ci(f['alpha']['ci95'])}, "
      f"β = {f['beta']['value']:.3f} {_ci(f['beta']['ci95'])}; frontier a = "
      f"{f['frontier']['a']['value']:.3f} {_ci(f['frontier']['a']['ci95'])}."
    )
  return lines


def _figures(a: Analysis) -> dict[str, tuple[object, str]]:
  """{name: (matplotlib figure, caption)} for the plots this analysis supports."""
  figures = {
    "curves_tokens": (
      plots.learning_curves(a, "tokens"),
      "Learning curves against training tokens, coloured by N.",
    )
  }
  figures["curves_flops"] = (
    plots.learning_curves(a, "flops"),
    (
      "Learning curves against training FLOPs; black: the compute envelope, the lowest loss "
      "any run reached at each C"
      if a.envelope
      else "Learning curves against training FLOPs."
    ),
  )
  if a.loss_vs_n:
    figures["loss_vs_n"] = (
      plots.loss_vs_n(a),
      (
        "Final eval loss against N with Kaplan's power law (gray, 95% band) and E + A N^-α "
        "(blue); crosses: each law fitted without the largest model, predicting it (95% interval)."
      ),
    )
  if a.isoflop:
    figures["isoflop"] = (
      plots.isoflop_profiles(a),
      (
        "IsoFLOP profiles: final loss against N at each compute budget, a parabola in log N "
        "and its minimum (stars)."
      ),
    )
  if a.isoflop or a.parametric or (a.envelope and np.isfinite(a.envelope.a)):
    figures["frontier"] = (
      plots.frontier(a),
      "Compute-optimal N against C from each approach that the sweep supports.",
    )
  if a.loss_vs_n or a.isoflop or a.parametric:
    figures["residuals"] = (plots.residuals(a), "Relative residuals of each fit against N.")
  return figures


def write_report(
  sweep: Sweep, source: str, out_dir: str, resamples: int = 200, seed: int = 0, only: str = ""
) -> dict[str, str]:
  """Analyse, plot and write every report file into `out_dir`; returns {kind: path}."""
  # Degenerate bootstrap refits (an unidentified E sends alpha to extremes) overflow by design;
  # their percentiles are reported as they come out.
  # Fine-tuning runs scored on a task have a task loss: they get their own section, not fits.
  # Distilled students are compared with their from-scratch twins below; the scaling fits
  # take the from-scratch runs alone, as one student size trained two ways is not a ladder.
  # Cooldown branches are the fits' points when a sweep has them; their stable runs never are.
  lm_runs = [r for r in sweep.runs if not r.task]
  students = distillation.pairs(sweep.runs)
  distilled = [r.name for r in sweep.runs if r.teacher]
  cooled, stable = branches.groups(sweep.runs), branches.stable_runs(sweep.runs)
  fitted = [r for r in lm_runs if not r.teacher and r.name not in stable]
  unbranched = [r.name for r in fitted if not r.branch_from] if cooled else []
  fitted = [r for r in fitted if r.branch_from] if cooled else fitted
  with np.errstate(over="ignore", invalid="ignore"):
    a = analysis.analyse(fitted, resamples=resamples, seed=seed)
    fits = analysis.fits_json(a)
  if cooled:
    fits["cooldown"] = _cooldown_json(cooled)
  if students:
    fits["distillation"] = [
      {
        "n": p.n,
        "tokens": p.tokens,
        "teacher": p.teacher.spec,
        "teacher_loss": p.teacher.loss,
        "scratch_loss": p.scratch.final_eval_loss,
        "distilled_loss": p.distilled.final_eval_loss,
        "gain": p.gain,
        "gain_se": p.gain_se,
        "gain_se_paired": p.paired is not None,
      }
      for p in students
    ]
  fits["bootstrap"] = {
    "resamples": resamples,
    "seed": seed,
    "method": (
      "parametric: each final loss is redrawn as loss * exp(eps), eps ~ N(0, sigma), sigma from "
      "its standard error and the fit's residuals, and the fit repeated"
    ),
  }
  fits["conventions"] = CONVENTIONS
  fits["source"] = {"path": source, "only": only, "runs": [r.name for r in sweep.runs]}
  os.makedirs(out_dir, exist_ok=True)
  doc = Document(f"Scaling report: {os.path.basename(os.path.normpath(source))}")
  done = sum(r.completed for r in sweep.runs)
  doc.text(
    f"Source `{source}`"
    + (f", members matching `{only}`" if only else "")
    + f": {len(sweep.runs)} runs, {done} completed"
    + "".join(
      f"; {status}: {', '.join(names)}" for status, names in _not_completed(sweep.runs).items()
    )
    + (f"; not started: {', '.join(sweep.not_started)}" if sweep.not_started else "")
    + (
      f"; distilled students ({', '.join(distilled)}) are left out of the fits and compared "
      "under Distillation"
      if distilled
      else ""
    )
    + (
      f"; the fits are on the {len(fitted)} cooldown branches alone (WSD decays of the stable "
      f"runs {', '.join(sorted(stable))}, which are left out of the fits"
      + (f", as are the runs that are not branches: {', '.join(unbranched)}" if unbranched else "")
      + "; see Cooldown branches)"
      if cooled
      else ""
    )
    + f". Generated {datetime.datetime.now().isoformat(timespec='seconds')} by "
    "`python -m gptjax.report`."
  )
  headline = _headline(fits) + distillation.findings(students)
  if headline:
    doc.heading("Findings")
    doc.bullets(headline)
  figures = {}
  if a.runs:  # the runs the fits take (none when, say, every LM run is a distilled student)
    doc.heading("Runs")
    _runs_table(doc, a)
    with np.errstate(over="ignore", invalid="ignore"):
      figures = _figures(a)
    for name, (fig, _) in figures.items():
      fig.savefig(os.path.join(out_dir, f"{name}.png"), dpi=110)
    doc.heading("Learning curves")
    doc.figure("curves_tokens.png", figures["curves_tokens"][1])
    doc.figure("curves_flops.png", figures["curves_flops"][1])
  finetuned_points = finetuned.points(sweep.runs)
  if finetuned_points:
    _finetuned(doc, finetuned_points, fits)
    finetuned.figure(finetuned_points).savefig(os.path.join(out_dir, "finetuned.png"), dpi=110)
  if a.loss_vs_n:
    doc.heading("Loss against model size")
    doc.figure("loss_vs_n.png", figures["loss_vs_n"][1])
  if a.isoflop:
    doc.heading("IsoFLOP profiles")
    doc.table(
      ["budget C", "N_opt", "D_opt", "loss at N_opt"],
      [
        [f"{m['flops']:.3g}", f"{m['n_opt']:.3g}", f"{m['d_opt']:.3g}", f"{m['loss']:.4f}"]
        for m in fits["isoflop"]["minima"]
      ],
    )
    doc.figure("isoflop.png", figures["isoflop"][1])
  if cooled:
    _cooldown(doc, cooled)
  if students:
    _distillation(doc, students, out_dir)
  if "frontier" in figures:
    doc.heading("Compute-optimal frontier")
    doc.figure("frontier.png", figures["frontier"][1])
  if "residuals" in figures:
    doc.heading("Residuals")
    doc.figure("residuals.png", figures["residuals"][1])
  tasks = downstream.points(sweep.runs)
  if tasks:
    _downstream(doc, tasks, fits)
    downstream.figure(tasks).savefig(os.path.join(out_dir, "downstream.png"), dpi=110)
  if a.skipped:
    doc.heading("Not fitted")
    doc.bullets(a.skipped)
  doc.heading("Conventions")
  doc.bullets(CONVENTIONS)

  paths = {
    "fits": os.path.join(out_dir, "fits.json"),
    "md": os.path.join(out_dir, "report.md"),
    "html": os.path.join(out_dir, "report.html"),
  }
  with open(paths["fits"], "w") as f:
    json.dump(_finite(fits), f, indent=2, allow_nan=False)
  with open(paths["md"], "w") as f:
    f.write(doc.markdown())
  with open(paths["html"], "w") as f:
    f.write(doc.html(out_dir))
  paths.update(
    {
      name: os.path.join(out_dir, f"{name}.png")
      for name in [
        *figures,
        *(["downstream"] if tasks else []),
        *(["finetuned"] if finetuned_points else []),
        *(["distillation"] if students else []),
      ]
    }
  )
  return paths


def _downstream(doc: Document, tasks: dict[str, list[downstream.Point]], fits: dict) -> None:
  """The section on task accuracy (python -m gptjax.evaluate rows), and its entry in fits."""
  doc.heading("Downstream tasks")
  doc.table(
    ["task", "run", "N", "C", "metric", "value ± s.e.", "chance"],
    [
      [
        name,
        p.run,
        f"{p.n:,}",
        f"{p.flops:.3g}",
        p.metric,
        f"{p.value:.4f} ± {_num(p.stderr)}",
        f"{p.chance:.3f}",
      ]
      for name, task_points in tasks.items()
      for p in task_points
    ],
  )
  fits["downstream"] = {
    name: {
      "metric": task_points[0].metric,
      "chance": task_points[0].chance,
      "fit_vs_loss": downstream.fit_vs_loss(task_points),
      "points": [vars(p) for p in task_points],
    }
    for name, task_points in tasks.items()
  }
  fitted = [
    f"{name}: {task_points[0].metric} = {fit['a']:.3f} {fit['b']:+.3f} x loss "
    f"({fit['points']} runs)"
    for name, task_points in tasks.items()
    if (fit := fits["downstream"][name]["fit_vs_loss"])
  ]
  if fitted:
    doc.bullets(fitted)
  doc.figure(
    "downstream.png",
    (
      "Task accuracy (acc_norm_char for multiple choice, acc for cloze) against training FLOPs, "
      "N and final eval loss, with standard errors; dashed: chance. Straight-line fits of "
      f"accuracy on loss (weighted by 1/s.e.^2) where a task has {downstream.FIT_MIN_POINTS} "
      "runs or more."
    ),
  )


def _finetuned(doc: Document, finetuned_points: list[finetuned.Point], fits: dict) -> None:
  """The section on fine-tuned accuracy against the source's pretraining, and its fits entry."""
  doc.heading("Fine-tuning over pretrained sizes")
  doc.table(
    ["run", "source", "source N", "source C", "source eval loss", "accuracy ± s.e."],
    [
      [
        p.run,
        p.source,
        f"{p.source_n:,}",
        f"{p.source_flops:.3g}",
        _num(p.source_loss),
        f"{p.accuracy:.4f} ± {_num(p.accuracy_se, 2)}",
      ]
      for p in sorted(finetuned_points, key=lambda p: p.source_flops)
    ],
  )
  fits["finetuned"] = [vars(p) for p in finetuned_points]
  doc.figure(
    "finetuned.png",
    "Fine-tuned eval accuracy (± binomial s.e.) against the pretraining FLOPs of the checkpoint "
    "each run started from, and against that source's final eval loss.",
  )


def _cooldown_json(cooled: list[branches.Group]) -> dict:
  return {
    "fit_on": "cooldown branches (train.branch_from); stable runs left out",
    "groups": [
      {
        "stable": g.source,
        "tokens_trained": g.tokens_trained,
        "tokens_separate": g.tokens_separate,
        "branches": [
          {
            "run": b.run.name,
            "branch_step": b.step,
            "n": b.run.n,
            "tokens": b.run.tokens,
            "loss": b.run.final_eval_loss,
            "sem": b.run.final_eval_sem,
            "twin": b.twin.name if b.twin else None,
            "twin_loss": b.twin.final_eval_loss if b.twin else None,
          }
          for b in g.branches
        ],
      }
      for g in cooled
    ],
  }


def _cooldown(doc: Document, cooled: list[branches.Group]) -> None:
  """Each stable run with its branches, and a separate run at the same budget where there is one."""
  doc.heading("Cooldown branches")
  doc.text(
    "Each branch continues its stable run's checkpoint at the branch step (parameters, "
    "optimizer state and data position) and decays the learning rate over its own budget "
    "(warmup-stable-decay, Hägele et al. 2024). The fits above are on these branches: one "
    "(N, D) point each, D and C counting the stable phase they share. A separate run is a "
    "run of this sweep at the same N and D that is not a branch (e.g. a cosine run)."
  )
  doc.table(
    ["stable run", "branch", "N", "from step", "D", "loss ± s.e.", "separate run", "its loss"],
    [
      [
        g.source,
        b.run.name,
        f"{b.run.n:,}",
        str(b.step),
        f"{b.run.tokens:,}",
        f"{_num(b.run.final_eval_loss)} ± {b.run.final_eval_sem:.3f}",
        b.twin.name if b.twin else "",
        f"{_num(b.twin.final_eval_loss)} ± {b.twin.final_eval_sem:.3f}" if b.twin else "",
      ]
      for g in cooled
      for b in g.branches
    ],
  )
  doc.bullets(
    [
      f"{g.source}: the stable run and its {len(g.branches)} cooldowns trained "
      f"{g.tokens_trained:,.0f} tokens; one run per budget would train {g.tokens_separate:,} "
      f"({100 * (1 - g.tokens_trained / g.tokens_separate):.0f}% saved)"
      for g in cooled
    ]
  )


def _distillation(doc: Document, pairs: list[distillation.Pair], out_dir: str) -> None:
  """Each distilled student next to its from-scratch twin, as a table and a figure."""
  doc.heading("Distillation")
  doc.text(
    "Students trained on the same tokens from scratch and distilled from a teacher "
    "(distill.alpha x T^2 x KL + (1 - alpha) x cross-entropy); both scored by cross-entropy on "
    "the true validation data. Gain = scratch - distilled (> 0: distillation helped), its "
    "standard error paired: clustered by validation document over the two runs' per-document "
    "loss differences on the shared eval set (s.e. marked * treats the two evals as "
    "independent, conservative: a run without its per-document losses)."
  )
  doc.table(
    ["teacher", "teacher loss", "student N", "D", "scratch", "distilled", "gain ± s.e."],
    [
      [
        p.teacher.name,
        _num(p.teacher.loss),
        f"{p.n:,}",
        f"{p.tokens:.3g}",
        _num(p.scratch.final_eval_loss),
        _num(p.distilled.final_eval_loss),
        f"{p.gain:+.4f} ± {p.gain_se:.4f}" + ("" if p.paired else "*"),
      ]
      for p in pairs
    ],
  )
  with np.errstate(over="ignore", invalid="ignore"):
    plots.distillation(pairs).savefig(os.path.join(out_dir, "distillation.png"), dpi=110)
  doc.figure(
    "distillation.png",
    "Student eval loss against N: from scratch (black), distilled (colours), and each "
    "teacher's own eval loss (dashed).",
  )


def _finite(value: object) -> object:
  """fits.json with nan/inf as null, so strict JSON parsers (not only Python's) read it."""
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  return value
