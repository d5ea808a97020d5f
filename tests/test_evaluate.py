"""gptjax.evaluate: scores against full forward passes, batch invariance, sliding windows,
task formats, metrics from hand-set scores, few-shot prompts, and the command line."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import test_generate
from test_generate import log_softmax
from test_model import forward, random_params, tiny_model
from test_train import ROOT

import gptjax
from gptjax import metrics, rundir
from gptjax.data.tokenizer import ByteTokenizer
from gptjax.evaluate import choice, perplexity, scoring, tasks
from gptjax.evaluate.choice import Shots
from gptjax.evaluate.scoring import Request, Score, Scorer
from gptjax.evaluate.tasks import Item
from gptjax.generate import Decoder, Settings, bucket

VOCAB = 100
saved_run = test_generate.saved_run  # the fixture: a run directory with checkpoints at 2 and 4


class Ids:
  """A stand-in tokenizer over ids: the scorer needs only the vocabulary size and end-of-text;
  the model has 100 embedding rows, the tokenizer 90, as a padded vocabulary would."""

  vocab_size, eos_id = 90, 0


def full_forward(model, params, ids: list[int]) -> np.ndarray:
  """Logits [len(ids), vocab] of one forward pass over a row of model.seq_len (zeros after
  `ids`, which causal attention keeps from reaching them): one compile for every length."""
  row = np.zeros((1, model.config.seq_len), np.int32)
  row[0, : len(ids)] = ids
  return np.array(forward(model, params, jnp.asarray(row))[0, : len(ids)])


def reference(model, params, request: Request, vocab_limit: int) -> tuple[float, bool]:
  """Sum of log-softmax over the continuation from one unpadded forward pass, float64."""
  seq_len = model.config.seq_len
  ids = (list(request.context) + list(request.continuation))[-(seq_len + 1) :]
  logits = np.array(full_forward(model, params, ids[:-1]), np.float64)
  logits[:, vocab_limit:] = -np.inf
  logprobs = log_softmax(logits)
  n = len(request.continuation)
  positions = range(len(ids) - 1 - n, len(ids) - 1)
  return (
    sum(logprobs[p, ids[p + 1]] for p in positions),
    all(np.argmax(logits[p]) == ids[p + 1] for p in positions),
  )


def greedy_continuation(model, params, context: list[int], n: int) -> list[int]:
  """n tokens of greedy decoding by full forward passes."""
  ids = list(context)
  for _ in range(n):
    logits = full_forward(model, params, ids)[-1]
    logits[Ids.vocab_size :] = -np.inf
    ids.append(int(np.argmax(logits)))
  return ids[len(context) :]


def random_ids(rng, n: int) -> list[int]:
  return [int(i) for i in rng.integers(1, Ids.vocab_size, n)]


def test_scores_equal_a_full_forward_pass_also_under_truncation():
  model = tiny_model(vocab_size=VOCAB)  # seq_len 16
  params = random_params(model)
  rng = np.random.default_rng(0)
  long_context = random_ids(rng, 30)  # 30 + 5 tokens: the first 18 are cut off
  requests = [
    Request(random_ids(rng, 4), random_ids(rng, 3)),
    Request(long_context, random_ids(rng, 5)),
    Request(random_ids(rng, 1), random_ids(rng, 16)),
  ]  # continuation fills the context
  for context, seen in ((random_ids(rng, 6), 6), (long_context, 13)):
    greedy = greedy_continuation(model, params, context[-seen:], 4)  # 13 + 4 = 17 tokens fit
    requests += [Request(context, greedy), Request(context, greedy[:3] + [greedy[3] % 89 + 1])]
  scorer = Scorer(model, params, Ids(), batch_size=4)
  scores = scorer.score(requests)
  for i, (request, score) in enumerate(zip(requests, scores)):
    logprob, is_greedy = reference(model, params, request, Ids.vocab_size)
    assert score.logprob == pytest.approx(logprob, abs=1e-5), i
    assert score.is_greedy == is_greedy and score.tokens == len(request.continuation), i
  assert [s.is_greedy for s in scores[3:]] == [True, False, True, False]
  with pytest.raises(
    ValueError,
    match=r"request 0: its continuation has 17 tokens, more than "
    r"the model's context \(model.seq_len=16\)",
  ):
    scorer.score([Request([1], random_ids(rng, 17))])
  assert scorer.compiles == 1


@pytest.mark.slow
def test_thirteen_requests_score_the_same_at_batch_1_4_and_8_with_one_compile_per_bucket():
  model = tiny_model(vocab_size=VOCAB, seq_len=64)
  params = random_params(model)
  rng = np.random.default_rng(1)
  requests = [
    Request(random_ids(rng, c), random_ids(rng, n))
    for c, n in [
      (1, 1),
      (3, 2),
      (10, 5),
      (20, 1),
      (30, 3),
      (2, 40),
      (50, 14),
      (70, 6),
      (5, 5),
      (15, 2),
      (33, 1),
      (1, 9),
      (60, 4),
    ]
  ]
  buckets = {bucket(min(len(r.context) + len(r.continuation), 65) - 1, 64) for r in requests}
  assert buckets == {16, 32, 64}
  results = {}
  for batch_size in (1, 4, 8):
    scorer = Scorer(model, params, Ids(), batch_size=batch_size)
    results[batch_size] = np.array([s.logprob for s in scorer.score(requests)])
    assert scorer.compiles == len(buckets)
  np.testing.assert_allclose(results[4], results[1], atol=1e-5, rtol=0)
  np.testing.assert_allclose(results[8], results[1], atol=1e-5, rtol=0)


def test_text_pairs_are_encoded_together_and_the_trailing_space_moves():
  tok = ByteTokenizer()
  assert scoring.split_whitespace("The capital is  ", "Paris") == ("The capital is", "  Paris")
  request = scoring.encode_pair(tok, "ab ", "cd")
  assert request == Request([256, 97, 98], [32, 99, 100])
  assert scoring.encode_pair(tok, "", "x") == Request([256], [120])
  # lm-eval's GPT-2 convention: end-of-text only where the context is empty.
  assert scoring.encode_pair(tok, "ab ", "cd", start_with_eos=False) == Request(
    [97, 98], [32, 99, 100]
  )
  assert scoring.encode_pair(tok, "", "x", start_with_eos=False) == Request([256], [120])


def test_windows_score_every_token_once_and_rolling_equals_the_perplexity_sum():
  """A 50-token document at context 8: disjoint windows (stride 8) and overlapping ones
  (stride 3) each score the 49 targets once; the rolling log-likelihood equals the
  perplexity module's summed loss and a per-token reference."""
  model = tiny_model(vocab_size=260, seq_len=8)
  params = random_params(model)
  tok = ByteTokenizer()
  text = "".join(chr(97 + i % 26) for i in range(49))
  ids = [tok.eos_id] + tok.encode(text)
  assert len(ids) == 50
  scorer = Scorer(model, params, tok, batch_size=4)
  for stride in (8, 3):
    requests = perplexity.windows(ids, 8, stride)
    assert [t for r in requests for t in r.continuation] == ids[1:]
    first, *later = requests
    assert list(first.context) == [tok.eos_id] and len(first.continuation) == 8
    assert all(len(r.context) + len(r.continuation) == 9 for r in later)
    assert all(len(r.continuation) == stride for r in later[:-1])
    [rolling] = perplexity.rolling_loglikelihood(scorer, [text], stride)
    expected, logprobs = 0.0, {}
    for t in range(1, 50):  # target t's window, from the convention's formula
      end = min(50, 9 if t <= 8 else 9 + stride * math.ceil((t - 8) / stride))
      if end not in logprobs:
        logits = np.array(full_forward(model, params, ids[max(0, end - 9) : end - 1]), np.float64)
        logits[:, tok.vocab_size :] = -np.inf
        logprobs[end] = log_softmax(logits)
      expected += logprobs[end][t - max(0, end - 9) - 1, ids[t]]
    assert rolling == pytest.approx(expected, abs=1e-4)
    result = perplexity.perplexity(scorer, [ids], stride)
    assert result["tokens"] == 49 and result["bytes"] == 49
    assert -result["loss"] * 49 == pytest.approx(rolling, abs=1e-5)
    assert result["bits_per_byte"] == pytest.approx(result["loss"] / math.log(2))
  with pytest.raises(ValueError, match=r"--stride=9: must be in \[1, model.seq_len=8\]"):
    perplexity.windows(ids, 8, 9)


# ------------------------------------------------------------------ formats and metrics

HELLASWAG = {  # a record of hellaswag_val.jsonl, as released (fields it has that we ignore too)
  "ind": 24,
  "activity_label": "Roof shingle removal",
  "ctx_a": "A man is sitting on a roof.",
  "ctx_b": "he",
  "ctx": "A man is sitting on a roof. he",
  "split": "val",
  "split_type": "indomain",
  "label": 3,
  "endings": [
    "is using wrap to wrap a pair of skis.",
    "is ripping level tiles off.",
    "is holding a rubik's cube.",
    "starts pulling up roofing on a roof.",
  ],
  "source_id": "activitynet~v_-JhWjGDPHMY",
}
WIKIHOW = {
  "ind": 4,
  "activity_label": "Home and Garden",
  "ctx_a": "[header] How to clean a grill [title] Heat it up.",
  "ctx_b": "then",
  "label": 0,
  "split": "val",
  "endings": ["scrub the [step] grates.", "sing."],
  "source_id": "wikihow~1",
}


def test_format_parsers_read_the_real_schemas(tmp_path):
  path = tmp_path / "hellaswag_val.jsonl"
  path.write_text(json.dumps(HELLASWAG) + "\n\n" + json.dumps(WIKIHOW) + "\n")
  roof, grill = tasks.read_items("hellaswag", str(path))
  assert roof == Item(
    "Roof shingle removal: A man is sitting on a roof. He", tuple(HELLASWAG["endings"]), 3
  )
  assert grill == Item(
    "Home and Garden: How to clean a grill. Heat it up. Then", ("scrub the grates.", "sing."), 0
  )
  lambada = tmp_path / "lambada_test.jsonl"
  lambada.write_text(
    json.dumps(
      {
        "text": "In my palm is a clear stone, and inside it is a "
        "small ivory statuette. A guardian angel.\n\n"
        "\"Figured if you're going to be out at night"
      }
    )
    + "\n"
  )
  [item] = tasks.read_items("lambada", str(lambada))
  assert item.choices == ("night",) and item.label == 0
  assert item.context.endswith("going to be out at")
  generic = tmp_path / "mc.jsonl"
  generic.write_text(
    '{"context": "2 + 2 =", "choices": ["3", "4"], "label": 1}\n'
    '{"context": "Sky:", "choices": ["blue", "red", "green"], "label": 0}\n'
  )
  assert tasks.read_items("choice", str(generic), limit=1) == [Item("2 + 2 =", ("3", "4"), 1)]
  generic.write_text('{"context": "x", "choices": ["a", "b"], "label": 2}\n')
  with pytest.raises(ValueError, match=r"mc.jsonl: line 1: 'label' must be an index"):
    tasks.read_items("choice", str(generic))
  generic.write_text('{"context": "x", "answers": ["a", "b"], "label": 0}\n')
  with pytest.raises(
    ValueError,
    match=r"line 1 lacks choices; a choice record has context, "
    r"choices, label",
  ):
    tasks.read_items("choice", str(generic))


class Stub:
  """A scorer with hand-set log-likelihoods: continuation text -> (logprob, greedy, tokens)."""

  def __init__(self, table):
    self.table, self.pairs = table, []

  def loglikelihood(self, pairs):
    self.pairs += pairs
    return [Score(*self.table[continuation]) for _, continuation in pairs]


def test_metrics_from_hand_set_log_likelihoods():
  # Item 1: raw ll picks "ab" (wrong); per char (-2/2 vs -3/6) picks "abcdef" (right);
  # per token (-2/1 vs -3/2) picks "abcdef" too. Item 2: raw picks "x" (right), per char
  # (-1/1 vs -1.5/3) picks "yyy" (wrong), per token (-1/1 vs -1.5/3) picks "yyy" (wrong).
  # Item 3: per token alone differs: -4/4 beats -2/1 and -3/2, per char -4/2 loses to -2/1.
  table = {
    " ab": (-2.0, True, 1),
    " abcdef": (-3.0, False, 2),
    " x": (-1.0, True, 1),
    " yyy": (-1.5, False, 3),
    " p": (-2.0, True, 1),
    " qq": (-4.0, False, 4),
    " r": (-3.0, False, 2),
  }
  items = [
    Item("c1", ("ab", "abcdef"), 1),
    Item("c2", ("x", "yyy"), 0),
    Item("c3", ("p", "qq", "r"), 1),
  ]
  m = choice.evaluate(Stub(table), items, Shots(), cloze=False)
  assert (m["acc"], m["acc_norm_char"], m["acc_norm_token"]) == (1 / 3, 1 / 3, 2 / 3)
  assert m["acc_stderr"] == pytest.approx(np.std([0, 1, 0], ddof=1) / math.sqrt(3))
  assert m["items"] == 3 and m["chance"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 3) / 3)

  cloze = [Item("a b", ("c",), 0), Item("d", ("e",), 0)]
  stub = Stub({" c": (-1.0, True, 1), " e": (-3.0, False, 2)})
  m = choice.evaluate(stub, cloze, Shots(), cloze=True)
  assert stub.pairs == [("a b", " c"), ("d", " e")]
  assert m["acc"] == 0.5 and m["ppl"] == pytest.approx(math.exp(2.0))
  assert m["ppl_stderr"] == pytest.approx(math.exp(2.0) * np.std([-1, -3], ddof=1) / math.sqrt(2))


def test_fewshot_prompts_are_seeded_never_self_and_use_the_delimiters():
  items = [Item(f"q{i}", ("no", "yes"), i % 2) for i in range(12)]
  shots = Shots(k=3, seed=7, delimiter="\n###\n", target_delimiter=" =>")
  first = choice.prompts(items, shots)
  assert first == choice.prompts(items, shots)  # deterministic
  assert first != choice.prompts(
    items, Shots(k=3, seed=8, delimiter="\n###\n", target_delimiter=" =>")
  )
  for i, text in enumerate(first):
    *demos, question = text.split("\n###\n")
    assert question == f"q{i}" and len(demos) == 3
    assert all(d.split(" =>")[0] != f"q{i}" for d in demos)
    assert all(
      d == f"{d.split(' =>')[0]} =>{('no', 'yes')[int(d[1:].split(' ')[0]) % 2]}" for d in demos
    )
  # An item's prompt does not depend on the others: the first 5 alone give the same prompts.
  assert choice.prompts(items[:5], shots, pool=items) == first[:5]
  # --limit scores the first items but draws from the whole file, as a full run does.
  assert choice.prompts(items, shots, limit=5) == first[:5]
  pool = items[:5]  # a separate pool holding items 0-4 verbatim: never their own demonstration
  for text, item in zip(choice.prompts(items, shots, pool=pool), items):
    assert f"{item.context} =>" not in text
  assert choice.prompts(items, Shots(), pool=None) == [i.context for i in items]
  with pytest.raises(ValueError, match="--num_fewshot=12: the demonstration pool has only 11"):
    choice.prompts(items, Shots(k=12))


# ------------------------------------------------------------------ the command line


def write_corpus(directory) -> str:
  """20 small text files of blank-line paragraphs; returns their glob."""
  rng = np.random.default_rng(0)
  words = ["alpha", "beta", "gamma", "delta", "def", "return", "x", "=", "(", ")"]
  directory.mkdir()
  for f in range(20):
    paragraphs = [" ".join(rng.choice(words, rng.integers(3, 30))) for _ in range(3)]
    (directory / f"doc{f}.txt").write_text("\n\n".join(paragraphs) + "\n")
  return str(directory / "*.txt")


def write_choice_file(path, count: int = 20) -> list[Item]:
  rng = np.random.default_rng(1)
  items = [
    Item(
      f"item {i}: the answer is",
      tuple(f"c{i}{j}" * int(rng.integers(1, 4)) for j in range(3)),
      int(rng.integers(3)),
    )
    for i in range(count)
  ]
  path.write_text(
    "".join(
      json.dumps({"context": it.context, "choices": list(it.choices), "label": it.label}) + "\n"
      for it in items
    )
  )
  return items


@pytest.mark.slow
def test_cli_writes_the_result_and_an_eval_row_and_refuses_bad_starts(saved_run, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(saved_run[0], workdir)
  corpus = write_corpus(tmp_path / "corpus")
  items = write_choice_file(tmp_path / "mc.jsonl")
  evaluate = [sys.executable, "-m", "gptjax.evaluate", f"--workdir={workdir}", "--batch_size=4"]
  done = subprocess.run(
    evaluate
    + [
      "--task=perplexity",
      f"--source={corpus}",
      "--stride=16",
      "--split=train",
      "--max_documents=6",
      "--step=2",
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
    env={**os.environ, "GPTJAX_CACHE": str(tmp_path / "cache")},
  )
  assert done.returncode == 0, done.stderr
  assert os.listdir(tmp_path / "cache" / "xla")  # its programs kept for the next start
  done = subprocess.run(
    evaluate
    + [
      "--task=choice",
      f"--data_file={tmp_path}/mc.jsonl",
      "--num_fewshot=2",
      "--fewshot_delimiter=\n",
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
  )
  assert done.returncode == 0, done.stderr
  assert "mc_2shot acc_norm_char:" in done.stdout

  ppl = json.loads((tmp_path / "run/eval/2/perplexity.json").read_text())
  assert ppl["settings"] == {"source": corpus, "split": "train", "stride": 16, "max_documents": 6}
  mc = json.loads((tmp_path / "run/eval/4/mc_2shot.json").read_text())
  assert mc["settings"]["fewshot_delimiter"] == "\n" and mc["metrics"]["items"] == 20
  # The same numbers in process: the run's tokenizer over the same documents and items.
  run = gptjax.load(workdir, step=2)
  data_config = run.config.data.copy_and_resolve_references()
  data_config.source = corpus
  documents = list(perplexity.document_ids(data_config, run.tokenizer, "train", 6))
  assert ppl["metrics"]["documents"] == len(documents) == 6
  with run.active():
    expected = perplexity.perplexity(Scorer(run.model, run.params, run.tokenizer), documents, 16)
  assert ppl["metrics"]["loss"] == pytest.approx(expected["loss"], abs=1e-6)
  assert ppl["metrics"]["tokens"] == sum(len(d) - 1 for d in documents)
  run = gptjax.load(workdir)
  with run.active():
    expected = choice.evaluate(
      Scorer(run.model, run.params, run.tokenizer), items, Shots(k=2, delimiter="\n"), cloze=False
    )
  assert mc["metrics"] == pytest.approx(expected, nan_ok=True)

  rows = metrics.read_rows(workdir)
  assert [r["task"] for r in rows] == ["perplexity", "mc_2shot"]
  assert rows[0]["step"] == 2 and rows[0]["perplexity/ppl"] == ppl["metrics"]["ppl"]
  assert rows[1]["mc_2shot/acc"] == mc["metrics"]["acc"] and rows[1]["tokens"] == 4 * 8 * 32
  assert not any("eval_loss" in r for r in rows)

  refused = subprocess.run(
    evaluate + ["--task=hellaswag"], capture_output=True, text=True, cwd=ROOT
  )
  assert refused.stderr.strip().endswith(
    "error: --task=hellaswag: needs --data_file=FILE.jsonl (datasets are not downloaded)"
  )
  before = sorted(p.name for p in (tmp_path / "run").iterdir())
  with rundir.RunLock(workdir, command="trainer"):
    refused = subprocess.run(
      evaluate + ["--task=choice", f"--data_file={tmp_path}/mc.jsonl"],
      capture_output=True,
      text=True,
      cwd=ROOT,
    )
  assert refused.returncode != 0 and "is in use by pid" in refused.stderr.splitlines()[-1]
  assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before
  assert len(metrics.read_rows(workdir)) == 2


@pytest.mark.slow
def test_cli_over_a_sweep_evaluates_every_completed_member(saved_run, tmp_path):
  sweep = tmp_path / "sweep"
  for name, status in (("a", "completed"), ("b", "running"), ("c", "completed")):
    shutil.copytree(saved_run[0], sweep / name)
    (sweep / name / "summary.json").write_text(json.dumps({"status": status}))
  (sweep / "sweep.json").write_text(json.dumps({"a": {}, "b": {}, "c": {}, "d": {}}))
  write_choice_file(tmp_path / "mc.jsonl", count=6)
  command = [
    sys.executable,
    "-m",
    "gptjax.evaluate",
    f"--workdir={sweep}",
    "--task=choice",
    f"--data_file={tmp_path}/mc.jsonl",
  ]
  refused = subprocess.run(command + ["--step=2"], capture_output=True, text=True, cwd=ROOT)
  assert refused.stderr.strip().splitlines()[-1].startswith("error: --step=2: ")
  done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
  assert done.returncode == 0, done.stderr
  assert done.stdout.count("== ") == 2
  for name, rows in (("a", 1), ("b", 0), ("c", 1)):
    assert [r["task"] for r in metrics.read_rows(str(sweep / name))] == ["mc"] * rows
    assert (sweep / name / "eval/4/mc.json").exists() == bool(rows)


def test_eval_tasks_are_validated_with_the_config(tmp_path):
  from gptjax.config import base_config, validate
  from gptjax.evaluate.tasks import check_tasks

  (tmp_path / "mc.jsonl").write_text('{"context": "x", "choices": ["a", "b"], "label": 0}\n')
  assert tasks.parse_tasks(f" perplexity, choice={tmp_path}/mc.jsonl,") == [
    ("perplexity", None),
    ("choice", f"{tmp_path}/mc.jsonl"),
  ]
  c = base_config()
  c.eval.num_fewshot = -1
  with pytest.raises(ValueError, match="eval.num_fewshot=-1: must be an integer >= 0"):
    validate(c)
  with pytest.raises(ValueError) as refused:
    check_tasks(f"hellaswag,choice={tmp_path}/missing.jsonl,squad=x.jsonl")
  assert str(refused.value).splitlines() == [
    "invalid eval config:",
    "  eval.tasks entry 'hellaswag': hellaswag needs an existing file, as hellaswag=FILE.jsonl",
    f"  eval.tasks entry 'choice={tmp_path}/missing.jsonl': choice needs an existing file, as "
    "choice=FILE.jsonl",
    "  eval.tasks entry 'squad=x.jsonl': unknown task 'squad'; use perplexity or "
    "TASK=FILE.jsonl with TASK one of hellaswag, lambada, choice",
  ]


@pytest.mark.slow
def test_training_with_eval_tasks_scores_the_final_checkpoint_once(tmp_path):
  """python -m gptjax.main with eval.tasks: the finished run holds the task results of its
  last step; rerunning the finished run trains and evaluates nothing again."""
  from test_train import cli

  corpus = write_corpus(tmp_path / "corpus")
  write_choice_file(tmp_path / "mc.jsonl", count=5)
  workdir = str(tmp_path / "run")
  command = cli(
    workdir,
    **{
      "train.steps": 3,
      "train.eval_every": 0,
      "data.source": corpus,
      "data.tokenizer": "bytes",
      "data.validation_percent": 20,
      "eval.tasks": f"perplexity,choice={tmp_path}/mc.jsonl",
      "eval.num_fewshot": 1,
    },
  )
  for _ in range(2):
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
  rows = [r for r in metrics.read_rows(workdir) if "task" in r]
  assert [(r["task"], r["step"]) for r in rows] == [("perplexity", 3), ("mc_1shot", 3)]
  assert rows[1]["settings"]["num_fewshot"] == 1 and rows[1]["mc_1shot/items"] == 5
  assert json.loads((tmp_path / "run/eval/3/perplexity.json").read_text())["metrics"]["ppl"] > 1
  assert not (tmp_path / "run/lock").exists()


# ------------------------------------------------------------------ lm-evaluation-harness

LOCAL_TASK = """\
task: gptjax_local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data_file}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: " "
metric_list:
  - metric: acc
  - metric: acc_norm
"""


@pytest.mark.parametrize(
  "gen_kwargs, strategy, temperature",
  [
    ({"until": ["\n"], "do_sample": False}, "greedy", None),
    ({"until": ["\n"], "do_sample": True, "temperature": 0.0}, "greedy", None),
    ({"until": ["\n"], "do_sample": True, "temperature": 0.7}, "sample", 0.7),
    # lm_eval leaves the temperature out here; transformers samples at its default, 1.
    ({"until": ["\n"], "do_sample": True}, "sample", 1.0),
  ],
)
def test_lm_eval_generation_kwargs_map_to_decoding_settings(gen_kwargs, strategy, temperature):
  from gptjax.evaluate import harness

  settings, until = harness.GptjaxLM._settings(gen_kwargs)
  assert settings.strategy == strategy and until == ("\n",)
  if temperature is not None:
    assert settings.temperature == temperature


@pytest.mark.slow
def test_lm_eval_model_matches_the_native_evaluator_and_generates_until(
  saved_run, tmp_path, monkeypatch
):
  """A local 20-item multiple-choice task run by lm_eval offline gives the accuracy of
  choice.evaluate on the same items; generate_until stops at `until` and `max_gen_toks`."""
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
  import lm_eval
  from lm_eval.api.instance import Instance
  from lm_eval.tasks import TaskManager

  from gptjax.evaluate import harness

  items = write_choice_file(tmp_path / "mc.jsonl")
  (tmp_path / "tasks").mkdir()
  (tmp_path / "tasks/gptjax_local_mc.yaml").write_text(
    LOCAL_TASK.format(data_file=tmp_path / "mc.jsonl")
  )
  results = lm_eval.simple_evaluate(
    model="gptjax",
    model_args=f"workdir={saved_run[0]},batch_size=4",
    tasks=["gptjax_local_mc"],
    task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
    num_fewshot=0,
    bootstrap_iters=0,
  )["results"]["gptjax_local_mc"]
  run = gptjax.load(saved_run[0])
  with run.active():
    native = choice.evaluate(
      Scorer(run.model, run.params, run.tokenizer), items, Shots(), cloze=False
    )
  assert results["acc,none"] == native["acc"]
  assert results["acc_norm,none"] == native["acc_norm_char"]
  assert 0 < native["acc"] < 1  # a random model: neither all right nor all wrong

  lm = harness.GptjaxLM(workdir=saved_run[0])
  request = lambda text, kwargs: Instance("generate_until", {}, (text, kwargs), 0)  # noqa: E731
  with run.active():
    [free] = Decoder(run.model, run.params, run.tokenizer).generate(
      [[256] + run.tokenizer.encode("def f(")], Settings(max_new_tokens=6)
    )[0]
  assert len(free.tokens) == 6 and free.finish_reason == "length"
  stop = free.text[2]
  assert lm.generate_until(
    [
      request("def f(", {"until": [stop], "max_gen_toks": 6}),
      request("def f(", {"max_gen_toks": 3, "do_sample": False}),
    ]
  ) == [free.text[: free.text.index(stop)], run.tokenizer.decode(free.tokens[:3])]
  [rolling] = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("abc " * 20,), 0)])
  with run.active():
    assert rolling == pytest.approx(
      perplexity.rolling_loglikelihood(Scorer(run.model, run.params, run.tokenizer), ["abc " * 20])[
        0
      ],
      abs=1e-5,
    )


# ------------------------------------------------------------------ scaling reports


@pytest.mark.slow
def test_report_plots_downstream_accuracy_with_chance_and_a_fit_against_loss(tmp_path):
  """A synthetic 4-member sweep whose runs carry task rows as python -m gptjax.evaluate writes
  them (one evaluated twice: the later step counts; one with perplexity only)."""
  from test_report import _render, _sweep

  ns = [5e4, 1.5e5, 4e5, 1.2e6]
  root = _sweep(tmp_path / "ladder", {f"m{i}": (n, 3e6) for i, n in enumerate(ns)})
  accs = [0.28, 0.31, 0.35, 0.40]
  losses = []
  for i, acc in enumerate(accs):
    summary = json.load(open(f"{root}/m{i}/summary.json"))
    losses.append(summary["final_eval_loss"])
    rows = [
      {
        "step": 2000,
        "tokens": 2,
        "flops": 1.0,
        "task": "hellaswag",
        "hellaswag/acc_norm_char": 0.9,
        "hellaswag/acc_norm_char_stderr": 0.01,
        "hellaswag/chance": 0.25,
      },
      {
        "step": 3000,
        "tokens": 3,
        "flops": summary["flops"],
        "task": "hellaswag",
        "settings": {"num_fewshot": 0},
        "hellaswag/acc": acc - 0.02,
        "hellaswag/acc_norm_char": acc,
        "hellaswag/acc_norm_char_stderr": 0.01 * (i + 1),
        "hellaswag/chance": 0.25,
      },
      {"step": 3000, "tokens": 3, "flops": 1.0, "task": "perplexity", "perplexity/loss": 3.0},
    ]
    with open(f"{root}/m{i}/metrics.jsonl", "a") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
  paths = _render(root)
  assert os.path.getsize(paths["downstream"]) > 0
  fits = json.load(open(paths["fits"]))["downstream"]
  assert set(fits) == {"hellaswag"}
  task = fits["hellaswag"]
  assert task["metric"] == "acc_norm_char" and task["chance"] == 0.25
  assert [p["value"] for p in task["points"]] == accs
  b, a = np.polyfit(losses, accs, 1, w=[1 / (0.01 * (i + 1)) for i in range(4)])
  assert task["fit_vs_loss"] == pytest.approx({"a": a, "b": b, "points": 4})
  assert task["fit_vs_loss"]["b"] < 0  # lower loss, higher accuracy
  md = open(paths["md"]).read()
  assert "## Downstream tasks" in md and "downstream.png" in md and "| hellaswag | m3 |" in md
