"""Fine-tuning data and starting weights: task files to batches, their errors, sft packing,
the graft of a pretrained run onto a task model, and (slow) a run that learns a task."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tfds_downloads

import gptjax
from gptjax import config as config_lib
from gptjax import metrics, objectives, sharding, train
from gptjax.data import ByteTokenizer, catalog, tasks
from gptjax.load import run_config
from gptjax.model import GPT, model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK = ByteTokenizer()


def task_config(objective="classify", **finetune):
  c = config_lib.base_config()
  c.model.update(
    dict(n_layer=1, d_model=16, n_head=2, d_ff=32, seq_len=24, vocab_size=260, special_tokens=3)
  )
  c.train.objective = objective
  c.finetune.update(finetune)
  return c


def write(path, lines):
  path.write_text("".join(line + "\n" for line in lines))
  return str(path)


def test_classify_entailment_and_similarity_inputs(tmp_path):
  path = write(tmp_path / "pairs.jsonl", [json.dumps({"a": "ab", "b": "c", "y": 1})])
  start, delim, extract = 260, 261, 262
  entail = tasks.encode_task(
    path, task_config(text_field="a", pair_field="b", label_field="y"), TOK, "classify"
  )
  a, b, c = TOK.encode("abc")
  np.testing.assert_array_equal(entail["tokens"][0, 0, :6], [start, a, b, delim, c, extract])
  assert entail["extract"].tolist() == [[5]] and entail["label"].tolist() == [1]
  # The LM loss predicts every input token after [start], the extract token included.
  np.testing.assert_array_equal(entail["weights"][0, 0, :7], [1, 1, 1, 1, 1, 0, 0])
  similar = tasks.encode_task(
    path,
    task_config(text_field="a", pair_field="b", label_field="y", similarity=True),
    TOK,
    "classify",
  )
  np.testing.assert_array_equal(similar["tokens"][0, 1, :6], [start, c, delim, a, b, extract])
  assert similar["extract"].tolist() == [[5, 5]]


def test_choice_from_csv_columns(tmp_path):
  path = write(tmp_path / "copa.csv", ["premise,c1,c2,label", "xy,p,q,1", "z,r,s,0"])
  batch = tasks.encode_task(
    path, task_config("choice", text_field="premise", choices_field="c1,c2"), TOK, "choice"
  )
  x, y, p, q = TOK.encode("xypq")
  assert batch["tokens"].shape == (2, 2, 25) and batch["label"].tolist() == [1, 0]
  np.testing.assert_array_equal(batch["tokens"][0, 1, :5], [260, x, y, 261, q])
  np.testing.assert_array_equal(batch["tokens"][0, 0, :5], [260, x, y, 261, p])


def test_sft_packs_examples_with_loss_on_response_and_closing_eos_only(tmp_path):
  lines = [
    json.dumps({"prompt": "ab", "response": "cd"}),  # 5 inputs
    json.dumps({"prompt": "x" * 10, "response": "y" * 9}),  # 20: a row of its own
    json.dumps({"prompt": "e", "response": "f"}),
  ]  # 3: fits after the first
  rows = tasks.encode_sft(write(tmp_path / "sft.jsonl", lines), task_config("sft"), TOK)
  eos = TOK.eos_id
  assert rows["inputs"].shape == (2, 24)
  a, b, c, d, e, f = TOK.encode("abcdef")
  np.testing.assert_array_equal(rows["inputs"][0, :8], [eos, a, b, c, d, eos, e, f])
  np.testing.assert_array_equal(rows["targets"][0, :8], [a, b, c, d, eos, e, f, eos])
  np.testing.assert_array_equal(rows["weights"][0, :9], [0, 0, 1, 1, 1, 0, 1, 1, 0])
  np.testing.assert_array_equal(rows["segment_ids"][0, :9], [1, 1, 1, 1, 1, 2, 2, 2, 0])
  assert rows["weights"][1].sum() == 10 and rows["segment_ids"][1].max() == 1


def test_sft_eval_loss_and_its_standard_error_over_examples_match_numpy(tmp_path):
  """The held-out SFT loss is the mean over response targets, its SE clustered by example
  (packed examples of one row are separate clusters), over padded eval batches."""
  lines = [
    json.dumps({"prompt": "ab" * (i % 3), "response": "xyz"[: 1 + i % 3] + str(i)})
    for i in range(40)
  ]
  path = write(tmp_path / "sft.jsonl", lines)
  c = task_config("sft", train_file=path, eval_file=path)
  c.data.tokenizer = "bytes"
  program = train.build(c, sharding.make_mesh(c.mesh), TOK.eos_id)
  data = tasks.load(c, TOK)
  with sharding.active(program.mesh, program.axis_rules):
    params = program.init(0).params
    values = train._evaluate_task(program, params, data.eval_batches(8), "sft")

  rows = data.eval
  # Examples are packed (rows hold several), over two batches, the second padded.
  assert rows["segment_ids"].max() > 1 and 8 < len(rows["inputs"]) < 16
  losses = np.asarray(
    objectives.next_token_losses(
      program.model, params, rows["inputs"], rows["targets"], None, rows["segment_ids"]
    ),
    np.float64,
  )
  sums, counts = [], []
  for r in range(len(losses)):
    for s in range(1, rows["segment_ids"][r].max() + 1):
      scored = (rows["segment_ids"][r] == s) & (rows["weights"][r] > 0)
      sums.append(losses[r][scored].sum())
      counts.append(scored.sum())
  sums, counts = np.array(sums), np.array(counts)
  mean = sums.sum() / counts.sum()
  k = len(sums)
  se = np.sqrt(k / (k - 1) * ((sums - mean * counts) ** 2).sum()) / counts.sum()
  assert values["eval_examples"] == k == 40
  assert values["eval_targets"] == counts.sum() == rows["weights"].sum()
  np.testing.assert_allclose(values["eval_loss"], mean, rtol=1e-6)
  np.testing.assert_allclose(values["eval_loss_sem"], se, rtol=1e-5)


def test_example_ids_are_unique_across_rows_and_zero_on_padding():
  segments = np.array([[1, 1, 2, 3, 0], [1, 2, 2, 0, 0]], np.int32)
  ids = np.asarray(objectives.example_ids(segments))
  np.testing.assert_array_equal(ids, [[1, 1, 2, 3, 0], [6, 7, 7, 0, 0]])


def test_long_examples_are_truncated_from_the_left_of_the_prompt_or_refused(tmp_path):
  path = write(
    tmp_path / "long.jsonl", [json.dumps({"prompt": "0123456789" * 3, "response": "ab"})]
  )
  rows = tasks.encode_sft(path, task_config("sft"), TOK)
  kept = [t for t, s in zip(rows["inputs"][0], rows["segment_ids"][0]) if s]
  assert len(kept) == 24 and TOK.decode(kept[1:-2]) == ("0123456789" * 3)[-21:]
  with pytest.raises(tasks.TaskDataError, match=r"long.jsonl:1: the example is 33 tokens"):
    tasks.encode_sft(path, task_config("sft", too_long="refuse"), TOK)


@pytest.mark.parametrize(
  "lines, message",
  [
    ([], r"empty"),
    (
      ['{"text": "a", "label": 0}', '{"txt": "b", "label": 1}'],
      r"bad.jsonl:2: no field 'text' .*finetune.text_field",
    ),
    (
      ['{"text": "a", "label": 2}'],
      r"bad.jsonl:1: field 'label' is 2; labels are integers in \[0, 2\)",
    ),
    (['{"text": "a", "label": "yes"}'], r"bad.jsonl:1: field 'label' is 'yes'"),
    (['{"text": "a", "label": 0}', "not json"], r"bad.jsonl:2: not a JSON object"),
  ],
)
def test_bad_task_files_name_file_line_and_field(tmp_path, lines, message):
  path = write(tmp_path / "bad.jsonl", lines)
  with pytest.raises(tasks.TaskDataError, match=message):
    tasks.encode_task(path, task_config(), TOK, "classify")


def test_an_unknown_column_name_is_an_error(tmp_path):
  path = write(tmp_path / "bad.tsv", ["sentence\tlabel", "a\t0"])
  with pytest.raises(
    tasks.TaskDataError,
    match=r"bad.tsv:2: no field 'text' \(it has \['label', "
    r"'sentence'\]\); set finetune.text_field",
  ):
    tasks.encode_task(path, task_config(), TOK, "classify")


def test_epoch_order_covers_every_row_once_per_epoch_and_resumes_by_step():
  rows = {"x": np.arange(10)[:, None]}
  data = tasks.TaskData(rows, rows, seed=3, identity="t", seq_len=1)
  assert data.steps_for(3, 4) == 8
  first = np.concatenate([data.train_batch(s, 5)["x"][:, 0] for s in range(2)])
  assert sorted(first) == list(range(10))
  again = tasks.TaskData(rows, rows, seed=3, identity="t", seq_len=1)
  np.testing.assert_array_equal(again.train_batch(1, 5)["x"], data.train_batch(1, 5)["x"])
  assert data.check_state(data.state(7)) == 7


def test_graft_keeps_only_the_head_and_new_token_rows_fresh():
  c = task_config()
  model = GPT(model_config(c.model))
  objective = objectives.make("classify", model, num_outputs=2)
  shapes = jax.eval_shape(
    lambda r: objectives.init_params(model, objective, r, 2), jax.random.PRNGKey(0)
  )
  rng = np.random.default_rng(0)
  is_leaf = lambda x: hasattr(x, "value")
  fill = lambda s: rng.normal(size=(s.value if is_leaf(s) else s).shape).astype(np.float32)
  fresh = jax.tree.map(fill, shapes, is_leaf=is_leaf)
  source = jax.tree.map(fill, objectives.gpt_params(shapes), is_leaf=is_leaf)
  grafted = objectives.graft(fresh, source, vocab_size=260)
  for path, leaf in jax.tree_util.tree_leaves_with_path(objectives.gpt_params(grafted)):
    expected = jax.tree_util.tree_leaves_with_path(source)
    [want] = [v for p, v in expected if p == path]
    if jax.tree_util.keystr(path) == "['wte']":
      np.testing.assert_array_equal(leaf[:260], want[:260])
      np.testing.assert_array_equal(leaf[260:], fresh["wte"][260:])
    else:
      np.testing.assert_array_equal(leaf, want)
  for a, b in zip(
    jax.tree.leaves(grafted[objectives.HEAD]), jax.tree.leaves(fresh[objectives.HEAD])
  ):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_fine_tuning_a_pretrained_run_learns_a_context_dependent_task(tmp_path):
  """Pretrain a tiny byte-level model, then fine-tune it with the GPT-1 objective on 'is blue
  more frequent than red' (experiments/tasks): >= 95% held-out accuracy; the run's step-0
  model is the source's with a fresh head and fresh special-token rows."""

  def tiny(c):
    c.model.update(dict(n_layer=2, d_model=64, n_head=4, d_ff=256, seq_len=64, vocab_size=260))
    c.data.tokenizer = "bytes"
    c.train.update(dict(log_every=25, num_samples=0))
    return c

  source_dir, tuned_dir = str(tmp_path / "source"), str(tmp_path / "tuned")
  pre = tiny(config_lib.base_config())
  pre.train.update(dict(steps=30, batch_size=8, eval_every=0, checkpoint_every=30))
  pre.data.eval_sequences = 8
  train.run(pre, source_dir)

  c = tiny(config_lib.base_config())
  c.model.special_tokens = 3
  c.train.update(
    dict(
      objective="classify",
      epochs=3,
      batch_size=32,
      eval_every=0,
      checkpoint_every=1000,
      init_from=f"run:{source_dir}",
    )
  )
  c.optim.update(dict(lr=1e-3, warmup_steps=5, schedule="linear", min_lr_ratio=0.0))
  c.finetune.train_file = f"{ROOT}/experiments/tasks/count_train.jsonl"
  c.finetune.eval_file = f"{ROOT}/experiments/tasks/count_eval.jsonl"
  summary = train.run(c, tuned_dir)
  assert summary["final_eval_examples"] == 400
  assert summary["final_eval_accuracy"] >= 0.95, summary

  # Step 0 (evaluated before the first update) is the source's GPT with a fresh head and
  # fresh special-token rows: its eval LM loss is that model's, computed here from the source.
  source = gptjax.load(source_dir)
  c = run_config(tuned_dir)  # as the run resolved it: its steps and its exact source
  program = train.build(c, sharding.make_mesh(c.mesh), source.tokenizer.eos_id)
  with sharding.active(program.mesh, program.axis_rules):
    fresh = program.init(c.train.seed).params
    params = objectives.graft(jax.device_get(fresh), jax.device_get(source.params), 260)
    data = tasks.load(c, source.tokenizer)
    expected = train._evaluate_task(program, params, data.eval_batches(32), "classify")
  first = json.loads(open(f"{tuned_dir}/metrics.jsonl").readline())
  assert first["step"] == 0 and first["eval_accuracy"] == expected["eval_accuracy"]
  np.testing.assert_allclose(first["eval_lm_loss"], expected["eval_lm_loss"], rtol=1e-6)
  np.testing.assert_allclose(first["eval_loss"], np.log(2), rtol=1e-6)  # the head starts at 0
  # The summary counts every trained parameter: the GPT (special rows included) and the head.
  assert summary["n_params"] == sum(x.size for x in jax.tree.leaves(fresh))
  assert summary["n_params_task_head"] == (64 + 1) * 2


@pytest.mark.slow
def test_an_epoch_run_resumed_at_an_epoch_boundary_matches_an_uninterrupted_one(tmp_path):
  """3 epochs straight vs 1 epoch then a resume to 3 (train.extend; constant lr, so the
  schedule is the same): same losses and bitwise the same parameters."""
  lines = [json.dumps({"text": f"{'ab' * (i % 5)}c{i}", "label": i % 2}) for i in range(16)]
  path = write(tmp_path / "t.jsonl", lines)

  def config(epochs):
    c = task_config(train_file=path, eval_file=path)
    c.data.tokenizer = "bytes"
    c.model.dropout = 0.1
    c.train.update(
      dict(
        objective="classify",
        epochs=epochs,
        batch_size=8,
        log_every=1,
        eval_every=0,
        checkpoint_every=100,
        num_samples=0,
        extend=True,
      )
    )
    c.optim.update(dict(warmup_steps=0, min_lr_ratio=1.0, schedule="linear"))
    return c

  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  train.run(config(3), straight)
  assert train.run(config(1), resumed)["step"] == 2
  assert train.run(config(3), resumed)["step"] == 6
  losses = [
    [r["train_loss"] for r in rows]
    for rows in (
      [json.loads(x) for x in open(f"{d}/metrics.jsonl") if "train_loss" in x]
      for d in (straight, resumed)
    )
  ]
  assert losses[0] == losses[1] and len(losses[0]) == 6
  final = [jax.device_get(gptjax.load(d).params) for d in (straight, resumed)]
  for a, b in zip(jax.tree.leaves(final[0]), jax.tree.leaves(final[1])):
    np.testing.assert_array_equal(a, b)


def test_a_checkpoint_resumes_only_under_its_objective_and_special_tokens():
  from gptjax import checkpoint

  c = config_lib.base_config()
  old = {
    k: v
    for k, v in checkpoint.resume_settings(c).items()
    if k not in ("model.special_tokens", "train.objective")
  }  # written before they existed
  checkpoint.check_resumable({"settings": old, "step": 0}, c, "old")
  c.train.objective, c.model.special_tokens = "classify", 3
  with pytest.raises(
    ValueError,
    match=r"model.special_tokens: checkpoint has 0, config has 3; "
    r"train.objective: checkpoint has 'lm', config has "
    r"'classify'",
  ):
    checkpoint.check_resumable({"settings": old, "step": 0}, c, "old")


SST2_URL = "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip"
PIQA_URL = "https://storage.googleapis.com/ai2-mosaic/public/physicaliqa/physicaliqa-train-dev.zip"


def in_token_order(arrays):
  """The examples of a task's arrays sorted by their token rows."""
  order = sorted(range(len(arrays["tokens"])), key=lambda i: arrays["tokens"][i].tobytes())
  return {k: v[order] for k, v in arrays.items()}


def catalog_config(tmp_path, objective, source, **finetune):
  c = task_config(objective, source=source, **finetune)
  c.data.data_dir = str(tmp_path / "tfds")
  c.data.download = True
  return c


@pytest.mark.slow
def test_catalog_tasks_encode_like_the_same_examples_in_a_file(tmp_path):
  """glue/sst2 (classify) and piqa (choice), prepared by TFDS's own builders from
  archives this test writes, give exactly the arrays of the same examples in jsonl files;
  unlabelled examples (-1) are skipped, and an all-unlabelled split is refused."""
  sst2 = [{"sentence": f"film {i} {'good ' * (i % 3)}", "label": i % 2} for i in range(30)]
  tsv = lambda rows: "sentence\tlabel\n" + "".join(f"{r['sentence']}\t{r['label']}\n" for r in rows)
  tfds_downloads.place_zip(
    str(tmp_path / "tfds"),
    "glue/sst2",
    SST2_URL,
    {
      "SST-2/train.tsv": tsv(sst2[:24]),
      "SST-2/dev.tsv": tsv(sst2[24:]),
      "SST-2/test.tsv": "index\tsentence\n0\tunlabelled\n",
    },
  )
  prepared = subprocess.run(
    [
      sys.executable,
      "-m",
      "gptjax.prepare",
      f"--config={ROOT}/experiments/finetune_classify.py:sst2",
      f"--config.data.data_dir={tmp_path / 'tfds'}",
      "--config.data.download=True",
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=300,
  )
  assert prepared.stdout.strip().splitlines()[-1] == (
    "prepared finetune.source='glue/sst2': glue/sst2[train] 24 examples, "
    "glue/sst2[validation] 6 examples"
  ), prepared.stderr
  piqa = [
    {"id": str(i), "goal": f"g{i}", "sol1": f"a{i}", "sol2": f"bb{i}", "label": i % 2}
    for i in range(12)
  ]
  jsonl = lambda rows: "".join(json.dumps(r) + "\n" for r in rows)
  tfds_downloads.place_zip(
    str(tmp_path / "tfds"),
    "piqa",
    PIQA_URL,
    {
      f"physicaliqa-train-dev/{name}.jsonl": jsonl([{**r, "label": None} for r in rows])
      for name, rows in (("train", piqa[:8]), ("dev", piqa[8:]))
    }
    | {
      f"physicaliqa-train-dev/{name}-labels.lst": jsonl([r["label"] for r in rows])
      for name, rows in (("train", piqa[:8]), ("dev", piqa[8:]))
    },
  )
  cases = [
    ("classify", "glue/sst2", sst2, 24, {"text_field": "sentence"}),
    ("choice", "piqa", piqa, 8, {"text_field": "goal", "choices_field": "sol1,sol2"}),
  ]
  for objective, source, rows, cut, fields in cases:
    from_catalog = tasks.load(catalog_config(tmp_path, objective, source, **fields), TOK)
    files = task_config(
      objective,
      train_file=write(tmp_path / "train.jsonl", [json.dumps(r) for r in rows[:cut]]),
      eval_file=write(tmp_path / "eval.jsonl", [json.dumps(r) for r in rows[cut:]]),
      **fields,
    )
    from_files = tasks.load(files, TOK)
    for split in ("train", "eval"):  # TFDS stores examples in its own (hashed) order
      expected, got = (
        in_token_order(getattr(from_files, split)),
        in_token_order(getattr(from_catalog, split)),
      )
      assert sorted(got) == sorted(expected)
      assert all(np.array_equal(got[k], expected[k]) for k in expected), (source, split)
  sst2_test = catalog_config(
    tmp_path, "classify", "glue/sst2", eval_split="test", text_field="sentence"
  )
  with pytest.raises(tasks.TaskDataError, match=r"every example is labelled -1.*eval_split"):
    tasks.load(sst2_test, TOK)
  with pytest.raises(
    ValueError, match=r"super_glue/copa.*needs the module 'tensorflow'.*pip install"
  ):
    tasks.load(catalog_config(tmp_path, "choice", "super_glue/copa"), TOK)
  not_there = catalog_config(tmp_path, "classify", "glue/rte")
  not_there.data.download = False
  with pytest.raises(ValueError, match=r"finetune.source='glue/rte'.*--config.finetune.source"):
    tasks.load(not_there, TOK)
  with pytest.raises(ValueError, match=r"finetune.text_field='text'.*'sentence'"):
    tasks.load(catalog_config(tmp_path, "classify", "glue/sst2"), TOK)


def test_catalog_task_settings_are_checked_before_any_work():
  # TFDS's older builders (lm1b, glue, ...) register only when every package before
  # theirs imports (h5py is a dependency for that): all of them resolve.
  assert [catalog.name_problems(n, "finetune.source") for n in ("lm1b", "glue/rte", "snli")] == [
    [],
    [],
    [],
  ]
  c = task_config(source="glue/sst2", train_file="a.jsonl")
  assert tasks.problems(c) == [
    "finetune.train_file='a.jsonl': finetune.source='glue/sst2' gives the examples; "
    "set finetune.train_file='' (or finetune.source='' to read files)"
  ]
  assert tasks.problems(task_config(source="glue/no_such_task")) == []  # configs: on load
  assert tasks.problems(task_config(source="no_such_dataset"))[0].startswith(
    "finetune.source='no_such_dataset': not a TFDS catalog dataset"
  )


def test_task_eval_lines_give_each_value_with_its_standard_error():
  sft = {"eval_loss": 1.5, "eval_loss_sem": 0.125, "eval_targets": 90, "eval_examples": 40}
  assert metrics.task_eval_line(sft) == "loss 1.5000 ± 0.1250 | targets 90 | examples 40"
  one = {"eval_loss": 1.5, "eval_loss_sem": float("nan"), "eval_targets": 3, "eval_examples": 1}
  assert metrics.task_eval_line(one) == "loss 1.5000 (SE n/a) | targets 3 | examples 1"
  classify = {"eval_loss": 0.25, "eval_accuracy": 0.75, "eval_accuracy_se": 0.0625}
  assert metrics.task_eval_line(classify) == "loss 0.2500 | accuracy 0.7500 ± 0.0625"
