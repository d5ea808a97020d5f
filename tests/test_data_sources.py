"""Data sources end to end: .txt/.jsonl globs and a real TFDS catalog builder, offline.

Also resume, process sharding and bad input. Real TFDS, real
Grain, real training runs of a tiny model; nothing is downloaded.
"""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
import tfds_downloads
from test_train import tiny_config

from gptjax import data, train
from gptjax.data import corpus, packing, pipeline, token_cache

TRAIN_OVERRIDES = {
  "data.tokenizer": "bytes",
  "train.batch_size": 32,
  "train.steps": 3,
  "train.eval_every": 0,
  "train.checkpoint_every": 3,
  "train.num_samples": 0,
  "data.eval_sequences": 4,
}


def paragraphs(n: int, tag: str) -> list[str]:
  return [
    f"{tag} paragraph {i}: caf\u00e9 \u2713 {'word ' * (i % 7)}\nsecond line {i}" for i in range(n)
  ]


def fed_documents(config, workdir) -> tuple[list[str], data.LMData]:
  """Train documents recovered from the rows train.run fed in its steps, in stream order."""
  tokenizer, lm = data.load(config.data, config.model.seq_len, config.train.seed)
  batch = config.train.batch_size
  rows_fed = {}
  for step in range(config.train.steps):
    ids = lm.stream_rows(step * batch, batch)
    for row_id, row in zip(ids, lm.train_batch(step, batch)):
      rows_fed[int(row_id)] = row
  assert sorted(rows_fed) == list(range(lm.stats["train"].rows))  # One epoch was fed.
  rows = np.stack([rows_fed[i] for i in range(len(rows_fed))])
  stream = np.concatenate([rows[0], rows[1:, 1:].reshape(-1)])  # S' = [EOS] + S + wrap.
  assert stream[0] == tokenizer.eos_id
  stream = stream[1 : 1 + lm.stats["train"].tokens]
  documents = np.split(stream, np.flatnonzero(stream == tokenizer.eos_id) + 1)[:-1]
  return [tokenizer.decode(doc[:-1]) for doc in documents], lm


def run_tiny(tmp_path, **overrides):
  config = tiny_config(**{**TRAIN_OVERRIDES, **overrides})
  workdir = str(tmp_path / "run")
  summary = train.run(config, workdir)
  assert summary["status"] == "completed" and np.isfinite(summary["final_train_loss"])
  return config, workdir


def train_ids(ids, percent):
  return [i for i in ids if not corpus.is_validation(i, percent)]


@pytest.mark.slow
def test_txt_glob_trains_and_feeds_the_documents_in_order(tmp_path):
  root = tmp_path / "corpus"
  root.mkdir()
  texts = {}
  for f in range(3):
    texts[f"part{f}.txt"] = paragraphs(12, f"file{f}")
    (root / f"part{f}.txt").write_text("\n\n \n".join(texts[f"part{f}.txt"]) + "\n\n")
  (root / "bad.txt").write_bytes(b"latin-1 caf\xe9\n\nok")
  config, workdir = run_tiny(
    tmp_path,
    **{
      "data.source": str(root / "*.txt"),
      "data.txt_documents": "blank_lines",
      "data.validation_percent": 10,
    },
  )
  by_id = {f"{name}#{i}": text for name, docs in texts.items() for i, text in enumerate(docs)}
  by_id.update({"bad.txt#0": "latin-1 caf\ufffd", "bad.txt#1": "ok"})
  expected = [
    by_id[i]
    for i in train_ids(sorted(by_id, key=lambda k: (k.split("#")[0], int(k.split("#")[1]))), 10)
  ]
  decoded, lm = fed_documents(config, workdir)
  assert decoded == expected
  assert lm.stats["validation"].documents == len(by_id) - len(expected) > 0


@pytest.mark.slow
def test_jsonl_glob_trains_and_feeds_the_documents_in_order(tmp_path):
  (tmp_path / "corpus" / "sub").mkdir(parents=True)
  docs = paragraphs(40, "json")
  with open(tmp_path / "corpus" / "sub" / "a.jsonl", "w") as f:
    for doc in docs:
      f.write(json.dumps({"body": doc, "n": 1}) + "\n\n")
  config, workdir = run_tiny(
    tmp_path,
    **{
      "data.source": str(tmp_path / "corpus" / "**" / "*.jsonl"),
      "data.jsonl_field": "body",
      "data.validation_percent": 10,
    },
  )
  decoded, _ = fed_documents(config, workdir)
  ids = [f"sub/a.jsonl#{i}" for i in range(len(docs))]
  assert decoded == [docs[int(i.split("#")[1])] for i in train_ids(ids, 10)]


DOLLY_URL = "https://github.com/databrickslabs/dolly/raw/master/data/databricks-dolly-15k.jsonl"


@pytest.mark.slow
def test_tfds_catalog_builder_offline(tmp_path):
  data_dir = str(tmp_path / "tfds")
  records = [
    dict(
      instruction=f"q{i}",
      context="",
      category="c",
      response=f"Answer {i}: {'la ' * (i % 9)}\u00fcber",
    )
    for i in range(60)
  ]
  catalog = {
    "data.source": "databricks_dolly",
    "data.data_dir": data_dir,
    "data.text_field": "response",
    "data.train_split": "train[:90%]",
    "data.eval_split": "train[90%:]",
  }
  with pytest.raises(ValueError, match=r"not prepared in data.data_dir=.*download=True"):
    run_tiny(tmp_path, **catalog)
  tfds_downloads.place(
    data_dir, "databricks_dolly", DOLLY_URL, "".join(json.dumps(r) + "\n" for r in records).encode()
  )
  config, workdir = run_tiny(tmp_path, **catalog, **{"data.download": True})
  decoded, lm = fed_documents(config, workdir)
  train_split = tfds.data_source("databricks_dolly", data_dir=data_dir, split="train[:90%]")
  assert decoded == [r["response"].decode() for r in train_split]
  assert len(decoded) == 54 and lm.stats["validation"].documents == 6
  with pytest.raises(ValueError, match=r"data.text_field='body'.*'response'"):
    run_tiny(tmp_path, **{**catalog, "data.text_field": "body"})


# --- resume, sharding ------------------------------------------------------


def lmdata(seed=0, documents=13, seq_len=16) -> pipeline.LMData:
  docs = [list(range(2, 2 + 7 * (i % 5 + 1))) for i in range(documents)]
  stream = packing.concat_documents(docs, eos_id=1)
  validation = packing.concat_documents(docs[:5], eos_id=1)
  return pipeline.LMData(
    token_cache.TokenFile(stream, documents, 0),
    token_cache.TokenFile(validation, 5, 0),
    seq_len=seq_len,
    seed=seed,
    vocab_size=64,
    eos_id=1,
    identity="toy|bytes-v1",
  )


# 17 rows, batch 6: resuming at step 1 is mid-epoch; the first batch after step 2
# holds the last 5 rows of epoch 0 and the first row of epoch 1.
@pytest.mark.parametrize("stop", [1, 2])
def test_resume_from_state_gives_the_uninterrupted_batches(stop):
  uninterrupted = lmdata()
  assert uninterrupted.stats["train"].rows == 17
  expected = [uninterrupted.train_batch(s, 6) for s in range(10)]
  saved = json.loads(json.dumps(uninterrupted.state(stop)))  # As a checkpoint stores it.
  restarted = lmdata()
  start = restarted.check_state(saved)
  assert start == stop
  for step in range(start, 10):
    np.testing.assert_array_equal(restarted.train_batch(step, 6), expected[step])


def test_check_state_rejects_other_data():
  state = lmdata().state(3)
  for other in (lmdata(seed=1), lmdata(documents=14), lmdata(seq_len=8)):
    with pytest.raises(ValueError, match="different data"):
      other.check_state(state)


def test_grain_order_is_pinned():
  """The row order must not change under an upgrade, or resumed runs would silently diverge
  (a deliberate change bumps pipeline.ORDER_VERSION, as v2's seed hash did)."""
  assert lmdata().stream_rows(0, 8).tolist() == [11, 8, 0, 1, 7, 6, 15, 9]
  assert lmdata().stream_rows(20, 8).tolist() != [11, 8, 0, 1, 7, 6, 15, 9]  # Reshuffled.


def test_two_processes_get_disjoint_shards_of_the_global_batch():
  lm = lmdata()
  for step in (0, 3):
    global_ids = lm.stream_rows(step * 8, 8)
    shards = [lm.train_batch(step, 8, process_index=p, process_count=2) for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(shards), lm.train_batch(step, 8))
    assert set(global_ids[:4].tolist()).isdisjoint(global_ids[4:].tolist())
  global_eval = lm.eval_batches(4, 6).batches
  for p in (0, 1):
    for (tokens, mask), (g_tokens, g_mask) in zip(lm.eval_batches(4, 6, p, 2).batches, global_eval):
      np.testing.assert_array_equal(tokens, g_tokens[2 * p : 2 * p + 2])
      np.testing.assert_array_equal(mask, g_mask[2 * p : 2 * p + 2])
  with pytest.raises(ValueError, match="process_count=3"):
    lm.eval_batches(4, 6, 0, 3)


# --- bad input -----------------------------------------------------------------------


def data_config(**overrides):
  c = tiny_config().data
  c.update(dict(tokenizer="bytes", **overrides))
  return c


def test_bad_sources_fail_early_naming_the_problem(tmp_path):
  assert any(
    "matches no files" in p
    for p in data.validate(data_config(source=str(tmp_path / "none" / "*.txt")))
  )
  assert any(
    "must end in .txt or .jsonl" in p
    for p in data.validate(data_config(source=str(tmp_path / "*.csv")))
  )
  assert any(
    "data.source='no_such_dataset': not a TFDS catalog" in p
    for p in data.validate(data_config(source="no_such_dataset"))
  )
  with pytest.raises(ValueError, match=r"data.source='no_such_dataset': not a TFDS catalog"):
    data.load(data_config(source="no_such_dataset"), 16, 0)
  (tmp_path / "lines.jsonl").write_text('{"text": "a"}\n\n{"body": "b"}\n')
  with pytest.raises(ValueError, match=r"lines.jsonl:3: no field 'text' \(found \['body'\]\)"):
    data.load(data_config(source=str(tmp_path / "*.jsonl")), 16, 0)
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "a.txt").write_text("")
  (tmp_path / "empty" / "b.txt").write_text("\n\n  \n")
  with pytest.raises(ValueError, match="empty corpus"):
    data.load(
      data_config(source=str(tmp_path / "empty" / "*.txt"), txt_documents="blank_lines"), 16, 0
    )
