"""Tests for gptjax.data: real TFDS, real SentencePiece, tiny corpora, no network."""

import io
import json
import os
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
import sentencepiece as spm
import tensorflow_datasets as tfds

from gptjax import data
from gptjax.data import (
  baselines,
  corpus,
  packing,
  paths,
  pipeline,
  source_dataset,
  sources,
  spm_training,
  token_cache,
)
from gptjax.data.tokenizer import ByteTokenizer, SentencePieceTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CODE = (
  "class Foo:\n\tdef bar(self, x):\n"
  '        """Docstring with ünïcödé ✓ 日本語 😀."""\n'
  "        return  x  *  2\r\n\n\n    \n# trailing   spaces   \n\x00\x7f end"
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  """Points $GPTJAX_CACHE at a temp dir for the whole module, then restores it."""
  path = str(tmp_path_factory.mktemp("cache"))
  previous = os.environ.get(paths.CACHE_ENV_VAR)
  os.environ[paths.CACHE_ENV_VAR] = path
  yield path
  if previous is None:
    del os.environ[paths.CACHE_ENV_VAR]
  else:
    os.environ[paths.CACHE_ENV_VAR] = previous


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory):
  """~60 small real stdlib files, plus files that must be excluded or skipped."""
  root = tmp_path_factory.mktemp("corpus")
  stdlib = corpus.stdlib_root()
  small = [
    f
    for f in sorted(os.listdir(stdlib))
    if f.endswith(".py") and 2_000 < os.path.getsize(os.path.join(stdlib, f)) < 12_000
  ]
  for i, name in enumerate(small[:60]):
    target = root / ("pkg" if i % 3 else "") / name
    target.parent.mkdir(exist_ok=True)
    shutil.copy(os.path.join(stdlib, name), target)
  (root / "unicode_mod.py").write_text(CODE, encoding="utf-8")
  (root / "test").mkdir()
  (root / "test" / "test_excluded.py").write_text("EXCLUDED = 1\n")
  (root / "notes.txt").write_text("not python\n")
  (root / "latin1.py").write_bytes('s = "caf\xe9"\n'.encode("latin-1"))
  return str(root)


def read_texts(source) -> list[str]:
  return list(sources.texts(source, "text"))


def make_config(**overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(
    dict(
      source="embedded",
      data_dir="",
      validation_percent=20,
      tokenizer="sentencepiece",
      vocab_size=600,
      spm_model_type="bpe",
      tokenizer_sample_chars=200_000,
      eval_sequences=8,
      download=False,
      train_split="train",
      eval_split="validation",
      text_field="text",
      txt_documents="file",
      jsonl_field="text",
      document_mask=False,
    )
  )
  config.update(overrides)
  return config


@pytest.fixture(scope="module")
def prepared(cache_dir, corpus_root):
  data_dir = os.path.join(cache_dir, "tfds")
  return (data_dir,) + source_dataset.prepare(corpus.spec(corpus_root, 20), data_dir)


@pytest.fixture(scope="module")
def spm_tokenizer(prepared):
  _, identity, splits = prepared
  texts = read_texts(splits["train"])
  return spm_training.load_or_train(identity, texts, 600, "bpe", 200_000)


# --- dataset -----------------------------------------------------------------


def test_dataset_reads_back_through_tfds_data_source(prepared, corpus_root):
  data_dir, identity, sources = prepared
  reopened = tfds.data_source(identity, data_dir=data_dir, download=False)
  paths_by_split = {
    split: {r["path"].decode() for r in reopened[split]} for split in ("train", "validation")
  }
  expected = {f.relpath for f in corpus.list_source_files(corpus_root)}
  assert paths_by_split["train"] | paths_by_split["validation"] == expected
  assert not paths_by_split["train"] & paths_by_split["validation"]
  assert all(corpus.is_validation(p, 20) for p in paths_by_split["validation"])
  assert not any(corpus.is_validation(p, 20) for p in paths_by_split["train"])
  assert "test/test_excluded.py" not in expected and "notes.txt" not in expected
  records = [r for split in ("train", "validation") for r in reopened[split]]
  unicode_doc = next(r for r in records if r["path"] == b"unicode_mod.py")
  assert unicode_doc["text"].decode("utf-8") == CODE
  latin1_doc = next(r for r in records if r["path"] == b"latin1.py")
  assert latin1_doc["text"].decode("utf-8") == 's = "caf\ufffd"\n'  # Replaced, not skipped.
  assert len(sources["train"]) == len(paths_by_split["train"])


def test_prepare_again_reuses_files(prepared, corpus_root):
  data_dir, identity, _ = prepared
  variant = os.path.join(data_dir, *identity.replace(":", "/").split("/"))
  before = {f: os.stat(os.path.join(variant, f)).st_mtime_ns for f in os.listdir(variant)}
  again, _ = source_dataset.prepare(corpus.spec(corpus_root, 20), data_dir)
  assert again == identity
  assert {f: os.stat(os.path.join(variant, f)).st_mtime_ns for f in os.listdir(variant)} == before


def test_dataset_name_tracks_python_version_and_files(corpus_root, tmp_path):
  name = corpus.spec(corpus_root, 20).name
  assert corpus.python_version_tag() in name
  shutil.copytree(corpus_root, tmp_path / "copy")
  (tmp_path / "copy" / "extra.py").write_text("x = 1\n")
  assert corpus.spec(str(tmp_path / "copy"), 20).name != name
  assert corpus.spec(corpus_root, 10).name != name


WARM_START = """
import sys
from gptjax import config, data
c = config.base_config().data
c.update(source=sys.argv[1], tokenizer="bytes", txt_documents="blank_lines", validation_percent=20)
tokenizer, lm = data.load(c, 16, 0)
print(lm.fingerprint, int(lm.train_rows(0, 2)[0].sum()), "tensorflow_datasets" in sys.modules)
"""


def test_a_start_with_warm_caches_reads_no_document_and_does_not_import_tfds(tmp_path):
  (tmp_path / "docs.txt").write_text("\n\n".join(f"document {i} " * 9 for i in range(40)))
  env = {**os.environ, paths.CACHE_ENV_VAR: str(tmp_path / "cache")}
  runs = [
    subprocess.run(
      [sys.executable, "-c", WARM_START, str(tmp_path / "*.txt")],
      capture_output=True,
      text=True,
      env=env,
      cwd=ROOT,
      check=True,
    ).stdout.split()
    for _ in range(2)
  ]
  assert runs[0][2] == "True"  # the first start prepares the dataset through TFDS
  assert runs[1] == runs[0][:2] + ["False"]  # the same data, from the caches alone


def test_split_rule_is_deterministic_and_near_the_requested_fraction():
  relpaths = [f"pkg/mod_{i}.py" for i in range(2000)]
  held_out = [p for p in relpaths if corpus.is_validation(p, 5)]
  assert held_out == [p for p in relpaths if corpus.is_validation(p, 5)]
  assert 60 < len(held_out) < 140


def test_empty_split_is_a_clear_error(tmp_path):
  (tmp_path / "only.py").write_text("x = 1\n")
  with pytest.raises(ValueError, match="validation_percent=5"):
    source_dataset.prepare(corpus.spec(str(tmp_path), 5), str(tmp_path / "tfds"))


# --- tokenizers ----------------------------------------------------------------


def test_byte_tokenizer_round_trips_and_counts_bytes():
  tok = ByteTokenizer()
  ids = tok.encode(CODE)
  assert tok.decode(ids + [tok.eos_id]) == CODE
  assert tok.token_byte_lengths()[ids].sum() == len(CODE.encode("utf-8"))
  assert tok.token_byte_lengths()[tok.eos_id] == 0


def test_byte_tokenizer_invalid_utf8_becomes_replacement_char():
  tok = ByteTokenizer()
  ids = [0xFF, ord("a"), 0xC3]  # Stray byte, ASCII, truncated 2-byte sequence.
  assert tok.decode(ids) == "\ufffda\ufffd"
  assert tok.decode_bytes(ids) == b"\xffa\xc3"
  with pytest.raises(UnicodeEncodeError):
    tok.encode("\ud800")  # A lone surrogate is not encodable as UTF-8.


def test_sentencepiece_round_trips_code_and_counts_bytes(spm_tokenizer, prepared):
  tok = spm_tokenizer
  _, _, splits = prepared
  texts = [CODE, "\t\t\n  \n", "", "x" * 5000] + read_texts(splits["validation"])
  lengths = tok.token_byte_lengths()
  for text in texts:
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert lengths[ids].sum() == len(text.encode("utf-8"))
  assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
  assert tok.vocab_size == 600 and lengths.shape == (600,)
  assert lengths[tok.eos_id] == 0 and tok.eos_id not in tok.encode(CODE)


def test_sentencepiece_training_is_deterministic(prepared):
  _, _, splits = prepared
  chunks = spm_training.sample_chunks(read_texts(splits["train"]), 50_000)
  assert sum(map(len, chunks)) == 50_000
  for model_type in ("bpe", "unigram"):
    assert spm_training.train(chunks, 400, model_type) == spm_training.train(
      chunks, 400, model_type
    )


def test_model_without_eos_is_rejected(prepared, tmp_path):
  _, _, splits = prepared
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(spm_training.sample_chunks(read_texts(splits["train"]), 20_000)),
    model_writer=model,
    vocab_size=300,
    eos_id=-1,
    minloglevel=2,
  )
  path = tmp_path / "no_eos.model"
  path.write_bytes(model.getvalue())
  with pytest.raises(ValueError, match="no EOS"):
    SentencePieceTokenizer.from_file(str(path))


# --- packing and batches -----------------------------------------------------------


def test_packing_makes_every_token_a_target_exactly_once():
  stream = packing.concat_documents([[5, 6, 7], [8], [9, 10, 11, 12, 13]], eos_id=1)
  assert stream.tolist() == [5, 6, 7, 1, 8, 1, 9, 10, 11, 12, 13, 1]
  rows = packing.pack(stream, seq_len=5)
  assert rows.tokens.shape == (3, 6) and rows.target_mask.shape == (3, 5)
  assert rows.tokens[0, 0] == 1  # The first document is predicted from EOS.
  np.testing.assert_array_equal(rows.tokens[:-1, -1], rows.tokens[1:, 0])  # Shared boundary.
  targets = rows.tokens[:, 1:][rows.target_mask == 1]
  np.testing.assert_array_equal(targets, stream)
  assert rows.target_mask.sum() == len(stream)
  np.testing.assert_array_equal(rows.tokens[-1, 1:][rows.target_mask[-1] == 0], [5, 6, 7])


def test_packing_a_stream_shorter_than_a_row_wraps():
  rows = packing.pack(np.array([4, 1], dtype=np.int32), seq_len=4)
  assert rows.tokens.tolist() == [[1, 4, 1, 4, 1]]
  assert rows.target_mask.tolist() == [[1, 1, 0, 0]]


def test_document_ends_and_target_documents(monkeypatch):
  stream = packing.concat_documents([[5, 6, 7], [8], [9, 10, 11, 12, 13]], eos_id=1)
  monkeypatch.setattr(packing, "SCAN_CHUNK", 5)  # EOS on both sides of chunk borders.
  ends = packing.document_ends(stream, eos_id=1)
  assert ends.tolist() == [3, 5, 11]
  # Rows of 5 targets: [5 6 7 1 8] [1 9 10 11 12] [13 1 | wrapped 5 6 7].
  assert packing.target_documents(ends, np.arange(3), 5, len(stream)).tolist() == [
    [0, 0, 0, 0, 1],
    [1, 2, 2, 2, 2],
    [2, 2, -1, -1, -1],
  ]


def small_lmdata(seed: int = 0, train_tokens: int = 1000) -> pipeline.LMData:
  train = packing.concat_documents([list(range(2, 2 + train_tokens // 10))] * 10, eos_id=1)
  validation = packing.concat_documents([[2, 3, 4]] * 7, eos_id=1)
  return pipeline.LMData(
    token_cache.TokenFile(train, documents=10, chars=0),
    token_cache.TokenFile(validation, documents=7, chars=0),
    seq_len=16,
    seed=seed,
    vocab_size=200,
    eos_id=1,
    identity="small",
  )


def test_train_batch_is_a_pure_function_of_seed_and_step():
  a, b, other = small_lmdata(0), small_lmdata(0), small_lmdata(1)
  batch = a.train_batch(step=3, batch_size=8)
  assert batch.shape == (8, 17) and batch.dtype == np.int32
  np.testing.assert_array_equal(batch, b.train_batch(step=3, batch_size=8))
  assert not np.array_equal(batch, other.train_batch(step=3, batch_size=8))
  assert not np.array_equal(batch, a.train_batch(step=4, batch_size=8))


def test_process_slices_concatenate_to_the_global_batch():
  lm = small_lmdata()
  global_batch = lm.train_batch(step=5, batch_size=12)
  slices = [
    lm.train_batch(step=5, batch_size=12, process_index=p, process_count=4) for p in range(4)
  ]
  np.testing.assert_array_equal(np.concatenate(slices), global_batch)
  with pytest.raises(ValueError, match="process_count=5"):
    lm.train_batch(step=0, batch_size=12, process_count=5)


def test_each_epoch_visits_every_row_once_even_with_huge_batches():
  lm = small_lmdata()
  num_rows = lm.stats["train"].rows
  stream = lm.train_batch(step=0, batch_size=3 * num_rows)  # Three epochs at once.
  all_rows = packing.pack(lm.train_tokens, lm.seq_len).tokens
  rows = {tuple(r) for r in all_rows}
  for epoch in range(3):
    epoch_rows = stream[epoch * num_rows : (epoch + 1) * num_rows]
    assert sorted(map(tuple, epoch_rows)) == sorted(map(tuple, all_rows))
    assert {tuple(r) for r in epoch_rows} == rows
  assert not np.array_equal(stream[:num_rows], stream[num_rows : 2 * num_rows])


def test_neighbouring_seeds_share_no_epoch_order():
  """grain reseeds each epoch with seed + epoch; seeding it with train.seed itself gave
  seed 0's second epoch the order of seed 1's first, so seed sweeps shared data orders."""
  rows = small_lmdata().stats["train"].rows
  epochs = {
    seed: [tuple(small_lmdata(seed).stream_rows(e * rows, rows)) for e in range(3)]
    for seed in range(4)
  }
  orders = [order for seed_orders in epochs.values() for order in seed_orders]
  assert all(sorted(order) == list(range(rows)) for order in orders)
  assert len(set(orders)) == len(orders) == 12


def test_eval_batches_are_fixed_padded_and_exact():
  lm = small_lmdata()
  batches = lm.eval_batches(batch_size=1, max_sequences=100).batches
  assert sum(mask.sum() for _, mask in batches) == lm.stats["validation"].tokens == 28
  padded = lm.eval_batches(batch_size=4, max_sequences=100).batches
  assert [t.shape for t, _ in padded] == [(4, 17)]
  assert padded[0][1][2:].sum() == 0  # Two real rows, two zero-weight pad rows.
  np.testing.assert_array_equal(padded[0][0][:2], np.concatenate([t for t, _ in batches]))


EVAL_ROWS_20 = [4, 22, 29, 30, 35, 38, 40, 41, 44, 45, 48, 51, 52, 61, 66, 70, 79, 82, 92, 93]


def spread_lmdata(seed: int = 0) -> pipeline.LMData:
  """98 validation rows of 8 targets from 40 documents of 10 to 29 tokens (EOS included).

  780 tokens: the last row ends with 4 wrapped targets.
  """
  docs = [list(range(2, 2 + 9 + (7 * i) % 20)) for i in range(40)]
  validation = packing.concat_documents(docs, eos_id=1)
  return pipeline.LMData(
    token_cache.TokenFile(validation, 40, 0),
    token_cache.TokenFile(validation, 40, 0),
    seq_len=8,
    seed=seed,
    vocab_size=32,
    eos_id=1,
    identity="spread",
  )


def test_eval_rows_are_a_fixed_sample_spread_over_the_whole_split():
  rows = spread_lmdata(seed=0).eval_rows(20)
  assert len(set(rows.tolist())) == 20 and rows.tolist() == sorted(rows.tolist())
  assert rows.tolist() != list(range(20))  # Not the old prefix.
  # Every quarter of the split is represented (a uniform sample of 20 of 100 rows
  # misses a given quarter with probability ~0.3%; the seed is fixed, so this is exact).
  assert sorted(set((rows // 25).tolist())) == [0, 1, 2, 3]
  # The same for every train seed and every call, and a larger set keeps these rows.
  np.testing.assert_array_equal(spread_lmdata(seed=7).eval_rows(20), rows)
  assert set(rows.tolist()) < set(spread_lmdata(seed=3).eval_rows(40).tolist())
  # Pinned: a library upgrade must not silently change every run's eval set.
  assert rows.tolist() == EVAL_ROWS_20


def test_eval_segments_name_each_targets_row_and_document():
  lm = spread_lmdata()
  eval_set = lm.eval_batches(batch_size=8, max_sequences=100)  # All 98 rows, padded to 104.
  assert len(eval_set.batches) == 13 and eval_set.segments.shape == (104, 8)
  tokens = np.concatenate([t for t, _ in eval_set.batches])
  mask = np.concatenate([m for _, m in eval_set.batches])
  np.testing.assert_array_equal(eval_set.segments >= 0, mask == 1)
  np.testing.assert_array_equal(tokens[:98], packing.pack(lm.validation_tokens, 8).tokens)
  # By hand: the document of stream position q is the number of EOS before it.
  stream = np.asarray(lm.validation_tokens)
  for i, row in enumerate(eval_set.rows):
    for j in range(8):
      q, k = row * 8 + j, eval_set.segments[i, j]
      if q >= len(stream):
        assert k == -1  # Wrapped: a repeat, not scored.
        continue
      assert eval_set.segment_rows[k] == row
      assert eval_set.segment_documents[k] == (stream[:q] == 1).sum()
  assert eval_set.segment_tokens.sum() == mask.sum() == lm.stats["validation"].tokens
  assert set(eval_set.segment_documents.tolist()) == set(range(40))
  np.testing.assert_array_equal(
    eval_set.segment_tokens, np.bincount(eval_set.segments[eval_set.segments >= 0])
  )


def test_eval_set_is_the_same_for_any_process_count():
  lm = spread_lmdata()
  whole = lm.eval_batches(8, 20)
  halves = [lm.eval_batches(8, 20, p, 2) for p in (0, 1)]
  for h in halves:
    np.testing.assert_array_equal(h.segments, whole.segments)
  for b, (tokens, _) in enumerate(whole.batches):
    np.testing.assert_array_equal(np.concatenate([h.batches[b][0] for h in halves]), tokens)


def test_unigram_cross_entropy():
  uniform = baselines.unigram_cross_entropy(np.arange(4), np.array([0, 1, 2, 3]), 4)
  assert uniform == pytest.approx(np.log(4))
  skewed = baselines.unigram_cross_entropy(np.zeros(98, dtype=int), np.zeros(5, dtype=int), 4)
  assert skewed == pytest.approx(-np.log(99 / 102))


# --- end to end ------------------------------------------------------------------


def test_load_corpus_caches_everything_and_saves_tokenizer(cache_dir, corpus_root, tmp_path):
  config = make_config()
  workdir = str(tmp_path / "run")
  tok, lm = data.load_corpus(corpus_root, config, seq_len=32, seed=0)
  data.save_tokenizer(tok, workdir)
  saved = os.path.join(workdir, "tokenizer", "spm.model")
  assert data.load_saved(os.path.dirname(saved)).fingerprint() == tok.fingerprint()
  cached = [
    os.path.join(dirpath, f)
    for dirpath, _, files in os.walk(cache_dir)
    for f in files
    if f.endswith((".model", ".bin", "array_record-00000-of-00001"))
  ]
  mtimes = {f: os.stat(f).st_mtime_ns for f in cached}
  assert any(f.endswith(".bin") for f in mtimes) and any(f.endswith(".model") for f in mtimes)

  tok2, lm2 = data.load_corpus(corpus_root, config, seq_len=32, seed=0)
  assert {f: os.stat(f).st_mtime_ns for f in cached} == mtimes
  np.testing.assert_array_equal(lm.train_batch(7, 4), lm2.train_batch(7, 4))
  assert lm.stats["train"].documents + lm.stats["validation"].documents == 62
  assert lm.stats["validation"].tokens == sum(
    m.sum() for _, m in lm.eval_batches(4, 10_000).batches
  )
  assert 0 < lm.unigram_cross_entropy() < np.log(tok.vocab_size)

  with pytest.raises(ValueError, match="new workdir"):
    data.save_tokenizer(
      data.load_corpus(corpus_root, make_config(tokenizer="bytes"), 32, 0)[0], workdir
    )


def test_byte_tokenizer_end_to_end(cache_dir, corpus_root, tmp_path):
  tok, lm = data.load_corpus(corpus_root, make_config(tokenizer="bytes"), 64, seed=3)
  assert tok.vocab_size == 257
  data.save_tokenizer(tok, str(tmp_path))
  assert isinstance(data.load_saved(str(tmp_path / "tokenizer")), ByteTokenizer)
  assert lm.train_batch(0, 2).max() <= 256


def test_token_cache_key_depends_on_tokenizer(spm_tokenizer):
  assert token_cache.cache_path("ds", spm_tokenizer, "train") != token_cache.cache_path(
    "ds", ByteTokenizer(), "train"
  )


def test_validate_names_field_value_and_fix():
  assert data.validate(make_config()) == []
  problems = data.validate(
    make_config(
      source="Foo Bar",
      validation_percent=0,
      tokenizer="nope.model",
      spm_model_type="wordpiece",
      eval_sequences=0,
    )
  )
  assert any("data.source='Foo Bar'" in p and "'embedded'" in p for p in problems)
  assert any("data.validation_percent=0" in p and "1..99" in p for p in problems)
  assert any("data.tokenizer='nope.model'" in p for p in problems)
  assert any("data.eval_sequences=0" in p for p in problems)
  assert data.validate(make_config(vocab_size=100)) and data.validate(
    make_config(spm_model_type="wordpiece")
  )
  del_config = make_config()
  del del_config["vocab_size"]
  assert any("data.vocab_size is missing" in p for p in data.validate(del_config))
  with pytest.raises(ValueError, match="data.source='Foo Bar'"):
    data.load(make_config(source="Foo Bar"), 32, 0)


# --- concurrent processes --------------------------------------------------------

PREPARE = """
import hashlib, json, os, sys, time
import ml_collections
from absl import logging
from gptjax import data
root, config, workdir, ready = sys.argv[1:]
open(os.path.join(ready, str(os.getpid())), 'w').close()
while len(os.listdir(ready)) < 2:  # start together, so that both find the cache empty
  time.sleep(0.01)
logging.set_verbosity(logging.INFO)
tok, lm = data.load_corpus(root, ml_collections.ConfigDict(json.loads(config)), 32, 0)
data.save_tokenizer(tok, workdir)
digest = lambda tokens: hashlib.sha256(tokens.tobytes()).hexdigest()
print(json.dumps({'tokenizer': tok.fingerprint(), 'data': lm.fingerprint,
                  'train': digest(lm.train_tokens), 'validation': digest(lm.validation_tokens)}))
"""


@pytest.mark.slow
def test_two_concurrent_preparations_into_one_empty_cache_both_succeed(corpus_root, tmp_path):
  """Dataset, tokenizer and token files are built once; the other process waits and reuses them."""
  (tmp_path / "ready").mkdir()
  env = {**os.environ, paths.CACHE_ENV_VAR: str(tmp_path / "cache"), "PYTHONPATH": ROOT}
  config = json.dumps(make_config().to_dict())
  runs = [
    subprocess.Popen(
      [
        sys.executable,
        "-c",
        PREPARE,
        corpus_root,
        config,
        str(tmp_path / f"run{i}"),
        str(tmp_path / "ready"),
      ],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=env,
    )
    for i in range(2)
  ]
  outputs = [run.communicate(timeout=300) for run in runs]
  for run, (_, err) in zip(runs, outputs):
    assert run.returncode == 0, err
  first, second = (json.loads(out.splitlines()[-1]) for out, _ in outputs)
  assert first == second
  logs = "".join(err for _, err in outputs)
  assert logs.count("source_corpus: preparing") == 1
  assert logs.count("tokenizer: training SentencePiece") == 1
  assert logs.count("tokens: encoded") == 2  # train and validation, once each
