"""Decoding: the KV cache against full forward passes, ragged batches, samplers, beam search,
seeds, errors, gptjax.load and the command line."""

from __future__ import annotations

import functools
import itertools
import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from test_model import SEQ_LEN, VOCAB, forward, random_params, tiny_model
from test_train import ROOT, cli, tiny_config

import gptjax
from gptjax import checkpoint, generate, sharding, train
from gptjax.data.tokenizer import ByteTokenizer
from gptjax.generate import Decoder, Settings

RAGGED = [[5, 17, 3], [9, 2, 44, 61, 7, 8, 30, 12], [70, 1, 23, 23, 50]]  # lengths 3, 8, 5


class Ids:
  """A stand-in tokenizer: id i is the character chr(65 + i), and `vocab_size` may be
  below the model's (ids past it, like padded embedding rows, must never come out)."""

  def __init__(self, vocab_size: int, eos_id: int):
    self.vocab_size, self.eos_id = vocab_size, eos_id

  def decode(self, ids) -> str:
    return "".join(chr(65 + int(i)) for i in ids)


def padded(prompts: list[list[int]], width: int) -> tuple[np.ndarray, np.ndarray]:
  out = np.zeros((len(prompts), width), np.int32)
  for i, p in enumerate(prompts):
    out[i, : len(p)] = p
  return out, np.array([len(p) for p in prompts], np.int32)


def log_softmax(logits: np.ndarray) -> np.ndarray:
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def recompute_greedy(
  model, params, prompt: list[int], n_new: int, tokenizer: Ids
) -> tuple[list[int], list[float]]:
  """Greedy decoding with no cache at all: a full forward pass over everything for each token."""
  seq, logprobs = list(prompt), []
  for _ in range(n_new):
    row = np.zeros((1, SEQ_LEN), np.int32)
    row[0, : len(seq)] = seq  # later positions cannot reach position len(seq) - 1 (causality)
    logits = np.array(forward(model, params, jnp.asarray(row))[0, len(seq) - 1])
    logits[tokenizer.vocab_size :] = -np.inf
    token = int(np.argmax(logits))
    seq.append(token)
    logprobs.append(float(log_softmax(logits)[token]))
    if token == tokenizer.eos_id:
      break
  return seq[len(prompt) :], logprobs


# ------------------------------------------------------------------ the cache


@pytest.mark.parametrize(
  "architecture,scan_layers",
  [  # two of four in the fast set
    ("gpt2", True),
    pytest.param("gpt2", False, marks=pytest.mark.slow),
    pytest.param("gpt1", True, marks=pytest.mark.slow),
    ("gpt1", False),
  ],
)
def test_prefill_and_cached_steps_equal_a_full_forward_pass(architecture, scan_layers):
  """A ragged batch of 3 prompts: one prefill pass, then cached steps at per-row positions,
  give at every generated position the logits of a full forward pass over that row alone;
  and the Decoder's greedy continuations are the ones a recompute-everything loop picks."""
  model = tiny_model(architecture=architecture, scan_layers=scan_layers)
  params = random_params(model)
  n_new = 6
  width = generate.bucket(8, SEQ_LEN - n_new)
  tokens, lengths = padded(RAGGED, width)
  logits, cache = jax.jit(generate._prefill_logits, static_argnums=(0, 4, 5))(
    model, params, tokens, lengths, width + n_new, 1
  )
  step = jax.jit(generate._next_logits, static_argnums=0)
  seqs = [list(p) for p in RAGGED]
  for t in range(n_new):
    full = np.zeros((3, SEQ_LEN), np.int32)
    for r, seq in enumerate(seqs):
      full[r, : len(seq)] = seq
    expected = np.asarray(forward(model, params, jnp.asarray(full)))
    for r, seq in enumerate(seqs):
      np.testing.assert_allclose(
        logits[r],
        expected[r, len(seq) - 1],
        rtol=1e-5,
        atol=1e-5,
        err_msg=f"row {r}, new token {t}",
      )
    chosen = np.argmax(np.asarray(logits), axis=-1).astype(np.int32)
    for seq, token in zip(seqs, chosen):
      seq.append(int(token))
    logits, cache = step(model, params, cache, chosen, lengths + t)

  tokenizer = Ids(vocab_size=VOCAB - 10, eos_id=3)
  completions = Decoder(model, params, tokenizer).generate(RAGGED, Settings(max_new_tokens=n_new))
  for prompt, [completion] in zip(RAGGED, completions):
    ids, logprobs = recompute_greedy(model, params, prompt, n_new, tokenizer)
    assert completion.tokens == ids
    np.testing.assert_allclose(completion.logprobs, logprobs, rtol=1e-5, atol=1e-5)
  assert len({tuple(c.tokens) for [c] in completions}) == 3


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_row_i_of_a_ragged_batch_equals_its_prompt_alone(strategy):
  model = tiny_model()
  params = random_params(model)
  settings = Settings(strategy=strategy, num_beams=3, num_return_sequences=1, max_new_tokens=6)
  decoder = Decoder(model, params, Ids(VOCAB, eos_id=0))
  together = decoder.generate(RAGGED, settings)
  for prompt, [row] in zip(RAGGED, together):
    [[alone]] = decoder.generate([prompt], settings)
    assert row.tokens == alone.tokens
    np.testing.assert_allclose(row.logprobs, alone.logprobs, rtol=1e-5, atol=1e-5)
  # Batched by two: the third prompt shares its batch with a pad row, and nothing changes.
  for [row], [by_two] in zip(together, decoder.generate(RAGGED, settings, batch_size=2)):
    assert by_two.tokens == row.tokens
    np.testing.assert_allclose(by_two.logprobs, row.logprobs, rtol=1e-5, atol=1e-5)


def test_compiles_once_per_strategy_batch_shape_and_length_bucket():
  model = tiny_model()
  decoder = Decoder(model, random_params(model), Ids(VOCAB, eos_id=0))
  short = [[1, 2], [3, 4, 5, 6, 7]]
  sample = Settings(strategy="sample", temperature=0.7, top_p=0.9, max_new_tokens=4)
  decoder.generate(short, sample)
  assert decoder.stats.compiles == 2  # prefill + decode loop
  decoder.generate([[8] * 9, [9]], sample)  # other prompts and lengths, the same bucket
  decoder.generate(
    short,
    Settings(strategy="sample", temperature=1.3, top_k=5, top_p=0.5, seed=3, max_new_tokens=4),
  )  # other values
  assert decoder.stats.compiles == 2
  assert generate.bucket(3, 100) == generate.bucket(16, 100) == 16
  assert generate.bucket(17, 100) == 32 and generate.bucket(40, 50) == 50


# ------------------------------------------------------------------ samplers


def np_keep(probs: np.ndarray, top_p: float) -> set[int]:
  """The smallest set of most likely tokens with mass >= top_p (at least one), in NumPy."""
  order = np.argsort(-probs, kind="stable")
  kept, mass = set(), 0.0
  for i in order:
    kept.add(int(i))
    mass += probs[i]
    if mass >= top_p:
      break
  return kept


def kept(logits: np.ndarray, temperature=1.0, top_k=0, top_p=1.0) -> set[int]:
  out = np.asarray(
    jax.jit(generate.filter_logits)(jnp.asarray(logits, jnp.float32), temperature, top_k, top_p)
  )
  return set(np.flatnonzero(np.isfinite(out)).tolist())


def test_top_p_keeps_the_smallest_set_reaching_p():
  probs = np.array([0.5, 0.3, 0.15, 0.05])
  logits = np.log(probs)
  assert kept(logits, top_p=0.6) == {0, 1}
  assert kept(logits, top_p=0.85) == {0, 1, 2}
  assert kept(logits, top_p=1.0) == {0, 1, 2, 3}
  assert kept(logits, top_p=1e-9) == {0}
  rng = np.random.default_rng(0)
  for _ in range(20):  # fixed random distributions against the NumPy reference
    probs = rng.dirichlet(np.full(12, 0.5))
    top_p = float(rng.uniform(0.05, 0.99))
    if np.min(np.abs(np.cumsum(np.sort(probs)[::-1]) - top_p)) > 1e-4:  # away from float ties
      assert kept(np.log(probs), top_p=top_p) == np_keep(probs, top_p)


def test_temperature_then_top_k_then_top_p():
  logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
  # Temperature first: at T=2 the mass of {0, 1} is 0.67 < 0.7, so top-p also keeps token 2;
  # top-p before temperature would have stopped at {0, 1} (0.8 >= 0.7).
  assert kept(logits, temperature=2.0, top_p=0.7) == {0, 1, 2}
  assert np_keep(np.exp(logits), 0.7) == {0, 1}
  # Top-k before top-p: renormalised over the top 2, token 0 alone has 0.625 >= 0.6;
  # top-p first would keep {0, 1} and top-k would leave both.
  assert kept(logits, top_k=2, top_p=0.6) == {0}
  # All three: T=2 gives [.38, .29, .21, .12]; top-3 renormalises to [.43, .34, .24]; p=0.7.
  assert kept(logits, temperature=2.0, top_k=3, top_p=0.7) == {0, 1}
  assert kept(logits, temperature=2.0, top_k=3, top_p=0.8) == {0, 1, 2}
  # What is sampled is the tempered distribution renormalised over the kept set.
  out = np.asarray(generate.filter_logits(jnp.asarray(logits, jnp.float32), 2.0, 3, 1.0))
  tempered = np.sqrt([0.5, 0.3, 0.15])
  np.testing.assert_allclose(np.exp(log_softmax(out))[:3], tempered / tempered.sum(), rtol=1e-6)


def test_10000_draws_never_pick_a_masked_or_padded_vocabulary_id():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=12).astype(np.float32)
  logits[10:] = 50.0  # past the tokenizer's vocabulary, and by far the most likely
  valid = logits[:10]
  top3 = set(np.argsort(-valid)[:3].tolist())
  keys = jax.random.split(jax.random.PRNGKey(0), 10_000)
  draw = jax.jit(functools.partial(generate.pick_tokens, vocab_limit=10, greedy=False))
  tokens = np.asarray(draw(jnp.asarray(np.tile(logits, (10_000, 1))), keys, 1.5, 3, 0.95))
  keep = np_keep(np.exp(log_softmax(valid[sorted(top3)] / 1.5)), 0.95)
  allowed = {sorted(top3)[i] for i in keep}
  assert set(np.unique(tokens).tolist()) == allowed  # every kept id is drawn, no other
  everything = np.asarray(draw(jnp.asarray(np.tile(logits, (10_000, 1))), keys, 1.0, 0, 1.0))
  assert everything.max() < 10 and len(np.unique(everything)) > 5


# ------------------------------------------------------------------ beam search


class Bigram(nn.Module):
  """A hand-built language model: next-token log-probs depend on the last token only.

  It has GPT's call signature, so the decoder runs it as it runs GPT (the cache it is
  handed is carried along unused)."""

  config: ml_collections.ConfigDict
  table: tuple[tuple[float, ...], ...]

  @nn.compact
  def __call__(self, tokens, *, cache=None, index=0, logits_at=None, deterministic=True):
    del index, deterministic
    if logits_at is not None:
      tokens = jnp.take_along_axis(tokens, logits_at[:, None], axis=1)
    return jnp.log(jnp.asarray(self.table, jnp.float32))[tokens], cache


def bigram(table: dict[int, dict[int, float]], vocab: int) -> Bigram:
  rows = []
  for i in range(vocab):
    row = np.full(vocab, 1e-30)
    for j, p in table.get(i, {}).items():
      row[j] = p
    rows.append(tuple((row / row.sum()).tolist()))
  config = ml_collections.FrozenConfigDict(
    dict(n_layer=1, n_head=1, d_model=1, dtype=jnp.float32, vocab_size=vocab, seq_len=16)
  )
  return Bigram(config, tuple(rows))


def test_beam_search_escapes_the_trap_greedy_falls_into():
  """From the prompt, A (0.5) beats B (0.4), but every continuation of A is a coin flip
  while B is followed by C with probability 0.9: greedy takes A, two beams find B C."""
  eos, start, a, b, c, d = range(6)
  model = bigram(
    {
      start: {a: 0.5, b: 0.4, eos: 0.1},
      a: {c: 0.5, d: 0.5},
      b: {c: 0.9, d: 0.1},
      c: {eos: 1.0},
      d: {eos: 1.0},
    },
    vocab=6,
  )
  decoder = Decoder(model, {}, Ids(6, eos_id=eos))
  [[greedy]] = decoder.generate([[start]], Settings(max_new_tokens=2))
  [[best, second]] = decoder.generate(
    [[start]], Settings(strategy="beam", num_beams=2, num_return_sequences=2, max_new_tokens=2)
  )
  assert greedy.tokens[0] == a
  assert best.tokens == [b, c] and best.finish_reason == "length"
  np.testing.assert_allclose(best.score, np.log(0.4 * 0.9) / 2, rtol=1e-4)
  assert second.tokens[0] == a and second.score < best.score
  assert best.score > sum(greedy.logprobs) / 2


@pytest.fixture(scope="module")
def vocab5():
  """A random tiny GPT over 5 ids, id 4 the end-of-text token, and one Decoder for it (so
  tests of the same shapes share its compiled programs)."""
  model = tiny_model(vocab_size=5)
  params = random_params(model, seed=3)
  return model, params, Decoder(model, params, Ids(5, eos_id=4))


def brute_force(
  model, params, prompt: list[int], n_new: int, eos: int, length_penalty: float
) -> list[tuple[float, tuple[int, ...]]]:
  """Every possible continuation (ending at end-of-text or after n_new tokens), scored by
  full forward passes, best first."""
  candidates = [
    seq
    for n in range(1, n_new + 1)
    for seq in itertools.product(range(5), repeat=n)
    if eos not in seq[:-1] and (n == n_new or seq[-1] == eos)
  ]
  rows = np.zeros((len(candidates), SEQ_LEN), np.int32)
  for i, seq in enumerate(candidates):
    rows[i, : len(prompt) + len(seq)] = prompt + list(seq)
  logp = log_softmax(np.asarray(forward(model, params, jnp.asarray(rows))))
  scored = []
  for i, seq in enumerate(candidates):
    total = sum(logp[i, len(prompt) + t - 1, token] for t, token in enumerate(seq))
    scored.append((total / len(seq) ** length_penalty, seq))
  return sorted(scored, reverse=True)


def test_beam_search_finds_the_brute_force_best(vocab5):
  """With enough beams (125 = every prefix of 3 tokens) the five best hypotheses of each
  prompt are the five best of all continuations, finished early or not."""
  model, params, decoder = vocab5
  prompts = [[2], [0, 1, 2, 3]]
  beams = decoder.generate(
    prompts,
    Settings(
      strategy="beam", num_beams=125, num_return_sequences=5, max_new_tokens=4, length_penalty=1.0
    ),
  )
  for prompt, hypotheses in zip(prompts, beams):
    exact = brute_force(model, params, prompt, 4, decoder.tokenizer.eos_id, 1.0)[:5]
    assert [tuple(c.tokens) for c in hypotheses] == [seq for _, seq in exact]
    np.testing.assert_allclose([c.score for c in hypotheses], [s for s, _ in exact], rtol=1e-5)
    assert len({len(seq) for _, seq in exact}) > 1  # shorter, finished hypotheses compete


@pytest.mark.slow
def test_one_beam_is_greedy(vocab5):
  """Also when greedy meets end-of-text: the beam's hypothesis finishes with it."""
  _, _, decoder = vocab5
  prompts = [[1, 3, 0], [2], [0, 0, 1, 2, 3, 1]]
  greedy = decoder.generate(prompts, Settings(max_new_tokens=8))
  beam = decoder.generate(
    prompts, Settings(strategy="beam", num_beams=1, max_new_tokens=8, length_penalty=1.5)
  )
  assert {c.finish_reason for [c] in greedy} == {"eos", "length"}
  for [g], [b] in zip(greedy, beam):
    assert (b.tokens, b.finish_reason) == (g.tokens, g.finish_reason)
    np.testing.assert_allclose(b.logprobs, g.logprobs, rtol=1e-6)


@pytest.mark.parametrize("length_penalty", [0.0, 0.6, 2.0])
def test_beam_scores_follow_the_length_penalty_formula(vocab5, length_penalty):
  """score = (sum of the generated tokens' log-probs) / (generated length ** length_penalty),
  the prompt excluded, with each log-prob the model's own; best first."""
  model, params, decoder = vocab5
  prompts = [[1, 3, 0], [2, 2, 1, 0, 3]]
  beams = decoder.generate(
    prompts,
    Settings(
      strategy="beam",
      num_beams=4,
      num_return_sequences=4,
      max_new_tokens=5,
      length_penalty=length_penalty,
    ),
  )
  for prompt, hypotheses in zip(prompts, beams):
    assert len(hypotheses) == 4
    scores = [c.score for c in hypotheses]
    assert scores == sorted(scores, reverse=True)
    for c in hypotheses:
      np.testing.assert_allclose(
        c.score, sum(c.logprobs) / len(c.tokens) ** length_penalty, rtol=1e-5
      )
      row = np.zeros((1, SEQ_LEN), np.int32)
      row[0, : len(prompt) + len(c.tokens)] = prompt + c.tokens
      logp = log_softmax(np.asarray(forward(model, params, jnp.asarray(row)))[0])
      expected = [logp[len(prompt) + t - 1, tok] for t, tok in enumerate(c.tokens)]
      np.testing.assert_allclose(c.logprobs, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ seeds, stops, errors


@pytest.mark.slow
def test_seeds():
  model = tiny_model()
  decoder = Decoder(model, random_params(model), Ids(VOCAB, eos_id=0))

  def tokens(**settings):
    out = decoder.generate(RAGGED, Settings(max_new_tokens=6, **settings))
    return [[c.tokens for c in completions] for completions in out]

  sample = dict(strategy="sample", temperature=1.0, num_return_sequences=2)
  assert tokens(**sample, seed=0) == tokens(**sample, seed=0)
  assert tokens(**sample, seed=0) != tokens(**sample, seed=1)
  assert tokens(seed=0) == tokens(seed=1) == tokens(strategy="sample", temperature=0.0, seed=2)
  draws = tokens(**sample, seed=0)
  assert all(a != b for a, b in draws)  # a prompt's return sequences are independent draws


def test_finished_rows_stop_and_the_batch_ends_with_its_last_row():
  """A -> B -> C -> D -> end-of-text, deterministically. Rows end at end-of-text or at a
  stop string (cut before it), and decoding stops once every row has ended."""
  eos, a, b, c, d = range(5)  # ids 1..4 decode to "B".."E"
  chain = {a: {b: 1.0}, b: {c: 1.0}, c: {d: 1.0}, d: {eos: 1.0}, eos: {eos: 1.0}}
  decoder = Decoder(bigram(chain, vocab=5), {}, Ids(5, eos_id=eos))
  [[x], [y]] = decoder.generate([[a], [c]], Settings(max_new_tokens=10))
  assert (x.tokens, x.text, x.finish_reason) == ([b, c, d, eos], "CDE", "eos")
  assert (y.tokens, y.finish_reason) == ([d, eos], "eos")
  assert decoder.stats.decode_tokens == 2 * 3  # 4 tokens: a prefill and 3 steps, not 10
  [[x], [y]] = decoder.generate([[a], [c]], Settings(max_new_tokens=10), stop=["D"])
  assert (x.tokens, x.text, x.finish_reason) == ([b, c], "C", "stop")
  assert (y.tokens, y.finish_reason) == ([d, eos], "eos")
  [[z]] = decoder.generate(
    [[a]], Settings(strategy="beam", num_beams=2, max_new_tokens=10), stop=["DE"]
  )
  assert (z.tokens, z.text, z.finish_reason) == ([b, c, d], "C", "stop")


def test_settings_and_prompts_are_refused_before_any_compile():
  bad = {
    "--top_p=0": dict(top_p=0.0),
    "--top_p=1.5": dict(top_p=1.5),
    "--top_k=-1": dict(top_k=-1),
    "--num_beams=0": dict(num_beams=0),
    "--num_return_sequences=5: beam search returns at most --num_beams=4": dict(
      strategy="beam", num_return_sequences=5
    ),
    "--num_return_sequences=2: greedy": dict(num_return_sequences=2),
    "--strategy='topk'": dict(strategy="topk"),
    "--temperature=-1": dict(temperature=-1.0),
    "--max_new_tokens=0": dict(max_new_tokens=0),
  }
  model = tiny_model()
  decoder = Decoder(model, random_params(model), Ids(VOCAB, eos_id=0))
  for message, fields in bad.items():
    with pytest.raises(ValueError, match="^" + message.replace("[", r"\[")):
      decoder.generate([[1]], Settings(**fields))
  with pytest.raises(ValueError, match="prompt 1 is empty"):
    decoder.generate([[1], []], Settings(max_new_tokens=4))
  with pytest.raises(ValueError, match="^--stop='': an empty stop string ends every completion"):
    decoder.generate([[1]], Settings(max_new_tokens=4), stop=["\n", ""])
  with pytest.raises(
    ValueError,
    match=r"prompt 0 has 10 tokens: with --max_new_tokens=7 that is "
    r"17, more than the model's context \(model.seq_len=16\); "
    r"shorten the prompt or set --max_new_tokens <= 6",
  ):
    decoder.generate([[1] * 10], Settings(max_new_tokens=7))
  assert decoder.stats.compiles == 0
  with pytest.raises(ValueError, match="train.sample_top_p=1.5"):
    from gptjax.config import validate

    validate(tiny_config(**{"train.sample_top_p": 1.5}))


# ------------------------------------------------------------------ gptjax.load, samples, CLI


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
  """A run directory written the way training writes one, without training: byte tokenizer,
  config.json, and checkpoints at steps 2 and 4 of a full TrainState (with Adam moments)."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config(**{"data.tokenizer": "bytes"})
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort())
  ByteTokenizer().save(os.path.join(workdir, "tokenizer"))
  mesh = sharding.make_mesh(config.mesh)
  program = train.build(config, mesh, ByteTokenizer.eos_id)
  states = {}
  with sharding.active(mesh, program.axis_rules):
    mngr = checkpoint.manager(workdir, config)
    for step in (2, 4):
      states[step] = program.init(step)
      checkpoint.save(mngr, step, states[step], config, {})
    checkpoint.wait(mngr)
    mngr.close()
  return workdir, states


@pytest.mark.slow
def test_load_restores_the_parameters_only(saved_run):
  workdir, states = saved_run
  run = gptjax.load(workdir)
  assert run.step == 4 and isinstance(run.tokenizer, ByteTokenizer)
  assert run.config.model.d_model == 32 and run.config.data.tokenizer == "bytes"
  assert jax.tree.structure(run.params) == jax.tree.structure(states[4].params)
  for got, saved in zip(jax.tree.leaves(run.params), jax.tree.leaves(states[4].params)):
    np.testing.assert_array_equal(got, saved)
    assert got.sharding.mesh.shape == run.mesh.shape
  earlier = gptjax.load(workdir, step=2)
  np.testing.assert_array_equal(earlier.params["wte"], states[2].params["wte"])
  # Another mesh than the run's (it trained data-parallel): the same values, sharded by fsdp.
  fsdp = sharding.make_mesh(
    ml_collections.ConfigDict(
      {"ici": {"data": 1, "fsdp": -1, "tensor": 1}, "dcn": {"data": 1, "fsdp": 1, "tensor": 1}}
    )
  )
  sharded = gptjax.load(workdir, mesh=fsdp)
  assert sharded.params["wte"].sharding.shard_shape((640, 32)) == (640, 4)
  np.testing.assert_array_equal(sharded.params["wte"], states[4].params["wte"])
  with run.active():
    [[completion]] = Decoder(run.model, run.params, run.tokenizer).generate(
      [[256, 100, 101]], Settings(max_new_tokens=4)
    )
  assert all(t <= 256 for t in completion.tokens)  # the model has 640 rows, bytes only 257


def test_a_cudnn_run_loads_off_gpu_with_blocks_attention_and_the_same_logits(saved_run, tmp_path):
  """A run trained with cuDNN's attention is read on a CPU (generate, evaluate) with 'blocks',
  the same exact causal softmax, rather than failing inside the first forward pass."""
  workdir, _ = saved_run
  gpu_run = str(tmp_path / "gpu_run")
  shutil.copytree(workdir, gpu_run)
  config = json.loads(open(os.path.join(gpu_run, "config.json")).read())
  config["model"]["attention_impl"] = "cudnn"
  with open(os.path.join(gpu_run, "config.json"), "w") as f:
    json.dump(config, f)
  tokens = np.array([[256, 100, 101, 102, 103]], np.int32)
  logits = []
  for run in (gptjax.load(gpu_run), gptjax.load(workdir)):
    assert run.config.model.attention_impl == "blocks"
    with run.active():
      logits.append(np.asarray(run.model.apply({"params": run.params}, tokens)[0]))
  np.testing.assert_array_equal(logits[0], logits[1])


def test_load_names_the_steps_that_exist(saved_run, tmp_path):
  workdir, _ = saved_run
  with pytest.raises(
    ValueError,
    match=r"^--step=3: no checkpoint at that step in .*; it has "
    r"steps 2, 4$",
  ):
    gptjax.load(workdir, step=3)
  shutil.copy(os.path.join(workdir, "config.json"), tmp_path / "config.json")
  with pytest.raises(ValueError, match=r"^--workdir=.*: no checkpoint in"):
    gptjax.load(str(tmp_path))
  with pytest.raises(ValueError, match=r"^--workdir=.*: no config.json there"):
    gptjax.load(str(tmp_path / "nothing"))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["beam", "greedy"])
def test_end_of_training_samples_record_their_decoding(saved_run, strategy, tmp_path):
  workdir, _ = saved_run
  run = gptjax.load(workdir)
  tc = tiny_config(**{"train.sample_strategy": strategy, "train.num_samples": 2}).train
  with run.active():
    train._write_samples(str(tmp_path), run.model, run.params, run.tokenizer, tc)
  header, *samples = (tmp_path / "samples.txt").read_text().split("\n\n")
  decoding = json.loads(header.removeprefix("decoding: "))
  assert decoding["strategy"] == strategy
  expected = {
    "beam": {
      "strategy": "beam",
      "num_beams": 4,
      "length_penalty": 1.0,
      "num_return_sequences": 2,
      "max_new_tokens": 8,
    },
    "greedy": {"strategy": "greedy", "max_new_tokens": 8},
  }[strategy]
  assert decoding == expected
  assert ("========" in samples) == (strategy == "beam")


def test_read_prompts(tmp_path):
  (tmp_path / "p.txt").write_text("first line\nsecond\n")
  (tmp_path / "p.jsonl").write_text('{"prompt": "a\\nb"}\n{"prompt": "c", "id": 2}\n')
  assert generate.read_prompts(["x"], str(tmp_path / "p.txt")) == ["x", "first line", "second"]
  assert generate.read_prompts([], str(tmp_path / "p.jsonl")) == ["a\nb", "c"]
  (tmp_path / "gap.txt").write_text("one\n\nthree\n")
  with pytest.raises(ValueError, match="gap.txt: line 2 is an empty prompt"):
    generate.read_prompts([], str(tmp_path / "gap.txt"))
  (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n')
  with pytest.raises(ValueError, match="line 1 is not a JSON object with a 'prompt' field"):
    generate.read_prompts([], str(tmp_path / "bad.jsonl"))
  with pytest.raises(ValueError, match="--prompt number 2 is empty"):
    generate.read_prompts(["a", ""], None)
  with pytest.raises(ValueError, match="no prompt: give --prompt=TEXT"):
    generate.read_prompts([], None)


@pytest.mark.slow
def test_cli_on_a_run_trained_in_the_test(tmp_path):
  workdir = str(tmp_path / "run")
  subprocess.run(
    cli(workdir, **{"train.steps": 4, "train.checkpoint_every": 2, "train.eval_every": 0}),
    check=True,
    capture_output=True,
    cwd=ROOT,
  )
  (tmp_path / "prompts.jsonl").write_text('{"prompt": "def f(x):\\n"}\n')
  output = tmp_path / "out.jsonl"
  command = [
    sys.executable,
    "-m",
    "gptjax.generate",
    f"--workdir={workdir}",
    "--step=2",
    "--prompt=import os",
    "--prompt=class A:",
    f"--prompts_file={tmp_path}/prompts.jsonl",
    "--strategy=sample",
    "--temperature=0.9",
    "--top_k=50",
    "--top_p=0.95",
    "--num_return_sequences=2",
    "--max_new_tokens=6",
    "--stop=\n\n",
    "--seed=3",
    f"--output={output}",
  ]
  # The CLI keeps its compiled programs in JAX's cache, as training does: a second start
  # compiles nothing new (no entry added) and decodes the same tokens.
  env = {**os.environ, "GPTJAX_CACHE": str(tmp_path / "cache")}
  done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
  assert done.returncode == 0, done.stderr
  cached = sorted(os.listdir(tmp_path / "cache" / "xla"))
  assert cached
  first_records = output.read_text()
  again = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
  assert again.returncode == 0, again.stderr
  assert sorted(os.listdir(tmp_path / "cache" / "xla")) == cached
  assert output.read_text() == first_records
  assert done.stdout.count("=== prompt") == 6 and "import os" in done.stdout
  assert "prefill:" in done.stderr and "tokens/s" in done.stderr
  records = [json.loads(line) for line in output.read_text().splitlines()]
  assert len(records) == 6
  for r in records:
    assert set(r) == {
      "prompt",
      "completion",
      "tokens",
      "token_logprobs",
      "finish_reason",
      "score",
      "prompt_index",
      "completion_index",
      "strategy",
      "settings",
      "stop",
      "step",
      "workdir",
    }
    assert r["step"] == 2 and r["strategy"] == "sample" and r["stop"] == ["\n\n"]
    assert r["settings"] == {
      "strategy": "sample",
      "temperature": 0.9,
      "top_k": 50,
      "top_p": 0.95,
      "seed": 3,
      "num_return_sequences": 2,
      "max_new_tokens": 6,
    }
    assert len(r["tokens"]) == len(r["token_logprobs"]) >= 1
    assert all(lp <= 0 for lp in r["token_logprobs"])
  assert [r["prompt"] for r in records[::2]] == ["import os", "class A:", "def f(x):\n"]

  refused = subprocess.run(command[:-1] + ["--step=3"], capture_output=True, text=True, cwd=ROOT)
  assert refused.returncode != 0
  assert refused.stderr.strip().endswith(
    f"--step=3: no checkpoint at that step in {workdir}/checkpoints; it has steps 2, 4"
  )
