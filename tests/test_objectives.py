"""The objectives of the one train step: masked normalisation under accumulation, GPT-1's
auxiliary LM weight, SFT masks and packing, multiple choice, checked against NumPy."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gptjax import objectives, train
from gptjax.config import base_config
from gptjax.model import GPT, model_config

pytestmark = pytest.mark.slow  # a few tiny compiles each: seconds to a minute on a busy CPU

VOCAB, SEQ = 40, 16


def tiny_model(**overrides) -> GPT:
  c = base_config().model
  c.update(
    dict(n_layer=1, d_model=16, n_head=2, d_ff=32, vocab_size=VOCAB, seq_len=SEQ, special_tokens=3)
  )
  c.update(overrides)
  return GPT(model_config(c))


def init(model, objective, num_outputs=3, seed=0):
  params = nn.unbox(objectives.init_params(model, objective, jax.random.PRNGKey(seed), num_outputs))
  if objectives.HEAD in params:  # the head starts at zero; give it something to say
    params[objectives.HEAD] = jax.tree.map(
      lambda p: 0.5 * jax.random.normal(jax.random.PRNGKey(seed + 1), p.shape),
      params[objectives.HEAD],
    )
  return params


def one_step(params, batch, objective, accum):
  """The update of one SGD(lr=1) step, and the step's loss."""
  tx = optax.sgd(1.0)
  state = train.TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=tx.init(params),
    rng=jax.random.PRNGKey(0),
  )
  step = jax.jit(
    functools.partial(
      train.train_step,
      objective=objective,
      tx=tx,
      schedule=lambda s: 1.0,
      micro_batch_size=len(next(iter(batch.values()))) // accum,
      use_dropout=False,
    )
  )
  new, metrics = step(state, batch)
  return jax.tree.map(jnp.subtract, new.params, params), float(metrics["train_loss"])


def sft_batch(rng, weights):
  rows, length = weights.shape
  tokens = np.asarray(jax.random.randint(rng, (rows, length + 1), 0, VOCAB), np.int32)
  return {
    "inputs": tokens[:, :-1],
    "targets": tokens[:, 1:],
    "weights": weights.astype(np.float32),
    "segment_ids": np.ones((rows, length), np.int32),
  }


def test_accumulation_1_and_4_give_the_same_update_with_unequal_masks():
  model = tiny_model()
  objective = objectives.make("sft", model)
  params = init(model, objective)
  # Micro-batch m (of 4) holds rows m and m + 4: 32, 2, 1 and 9 unmasked targets.
  weights = np.zeros((8, SEQ))
  for row, count in {0: 16, 4: 16, 1: 1, 5: 1, 2: 1, 3: 4, 7: 5}.items():
    weights[row, :count] = 1
  batch = sft_batch(jax.random.PRNGKey(1), weights)
  update_1, loss_1 = one_step(params, batch, objective, 1)
  update_4, loss_4 = one_step(params, batch, objective, 4)

  losses = objectives.next_token_losses(
    model, params, batch["inputs"], batch["targets"], None, batch["segment_ids"]
  )
  assert np.isclose(loss_1, float((losses * weights).sum() / weights.sum()), rtol=1e-6)
  assert np.isclose(loss_4, loss_1, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(update_4), jax.tree.leaves(update_1)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
  # The mean of the micro-batches' own means is a different (wrong) number here.
  per_micro = [(losses[m::4] * weights[m::4]).sum() / weights[m::4].sum() for m in range(4)]
  assert not np.isclose(np.mean(per_micro), loss_1, rtol=1e-3)


def test_sft_prompt_targets_get_exactly_zero_gradient():
  model = tiny_model()
  objective = objectives.make("sft", model)
  params = init(model, objective)
  weights = np.zeros((2, SEQ))
  weights[:, 9:] = 1  # targets 0..8 are the prompt's
  batch = sft_batch(jax.random.PRNGKey(2), weights)
  perturbed = dict(batch, targets=batch["targets"].copy())
  perturbed["targets"][:, :9] = (perturbed["targets"][:, :9] + 7) % VOCAB
  grad = jax.jit(jax.grad(lambda p, b: objective.loss(p, b, None)[0]["lm"]))
  g, g_perturbed = grad(params, batch), grad(params, perturbed)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_perturbed)):
    np.testing.assert_array_equal(a, b)
  perturbed["targets"][:, 9] = (perturbed["targets"][:, 9] + 7) % VOCAB  # a response target
  assert not np.array_equal(jax.tree.leaves(grad(params, perturbed))[0], jax.tree.leaves(g)[0])


def test_packed_rows_give_each_example_its_own_loss():
  model = tiny_model()
  objective = objectives.make("sft", model)
  params = init(model, objective)
  a = np.arange(1, 8, dtype=np.int32)  # 7 tokens: 6 targets
  b = np.arange(20, 29, dtype=np.int32)  # 9 tokens: 8 targets

  def losses(inputs, targets, segments):
    return np.asarray(
      objectives.next_token_losses(model, params, inputs[None], targets[None], None, segments[None])
    )[0]

  def alone(x):
    pad = SEQ - len(x) + 1
    inputs = np.concatenate([x[:-1], np.zeros(pad, np.int32)])
    segments = np.concatenate([np.ones(len(x) - 1, np.int32), np.zeros(pad, np.int32)])
    return losses(inputs, np.concatenate([x[1:], np.zeros(pad, np.int32)]), segments)[: len(x) - 1]

  packed_in = np.concatenate([a[:-1], b[:-1], [0, 0]]).astype(np.int32)
  packed_tg = np.concatenate([a[1:], b[1:], [0, 0]]).astype(np.int32)
  segments = np.array([1] * 6 + [2] * 8 + [0, 0], np.int32)
  packed = losses(packed_in, packed_tg, segments)
  np.testing.assert_allclose(packed[:6], alone(a), rtol=1e-5)
  np.testing.assert_allclose(packed[6:14], alone(b), rtol=1e-5)
  unmasked = losses(packed_in, packed_tg, np.ones(SEQ, np.int32))
  assert not np.allclose(unmasked[6:14], alone(b), rtol=1e-3)  # without the mask b sees a


def task_batch(rng, rows, k, label_count):
  r1, r2, r3 = jax.random.split(rng, 3)
  tokens = np.asarray(jax.random.randint(r1, (rows, k, SEQ + 1), 0, VOCAB), np.int32)
  extract = np.asarray(jax.random.randint(r2, (rows, k), 4, SEQ), np.int32)
  weights = (np.arange(SEQ)[None, None] < extract[..., None]).astype(np.float32)
  return {
    "tokens": tokens,
    "weights": weights,
    "extract": extract,
    "label": np.asarray(jax.random.randint(r3, (rows,), 0, label_count), np.int32),
    "example_weights": np.ones(rows, np.float32),
  }


def by_hand(model, params, batch, kind):
  """Task CE and masked LM mean from the model's hidden states and NumPy."""
  tokens = batch["tokens"]
  rows, k, _ = tokens.shape
  flat = tokens.reshape(rows * k, -1)
  (logits, _), state = model.apply(
    {"params": objectives.gpt_params(params)}, flat[:, :-1], mutable=["intermediates"]
  )
  hidden = np.asarray(state["intermediates"]["hidden"][0], np.float64)
  features = hidden[np.arange(rows * k), batch["extract"].reshape(-1)].reshape(rows, k, -1)
  head = jax.tree.map(np.asarray, params[objectives.HEAD])
  if kind == "classify":
    scores = features.sum(axis=1) @ head["kernel"] + head["bias"]
  else:
    scores = (features @ head["kernel"] + head["bias"])[..., 0]
  log_p = scores - np.log(np.exp(scores).sum(-1, keepdims=True))
  task = -log_p[np.arange(rows), batch["label"]].mean()
  lm_logits = np.asarray(logits, np.float64)
  lm_logp = lm_logits - np.log(np.exp(lm_logits).sum(-1, keepdims=True))
  token_loss = -np.take_along_axis(lm_logp, flat[:, 1:, None], -1)[..., 0].reshape(rows, k, -1)
  lm = (token_loss * batch["weights"]).sum() / batch["weights"].sum()
  return task, lm


def test_lm_weight_zero_is_the_task_loss_and_positive_adds_lambda_lm():
  model = tiny_model()
  batch = task_batch(jax.random.PRNGKey(3), 4, 2, 3)  # two sequences: similarity
  for lm_weight in (0.0, 0.5, 2.0):
    objective = objectives.make("classify", model, lm_weight=lm_weight, num_outputs=3)
    params = init(model, objective)
    task, lm = by_hand(model, params, batch, "classify")
    _, loss = one_step(params, batch, objective, 1)
    np.testing.assert_allclose(loss, task + lm_weight * lm, rtol=1e-5)
  assert lm > 0.1  # the two cases differ


def test_multiple_choice_prediction_follows_the_answers_content():
  model = tiny_model()
  objective = objectives.make("choice", model, lm_weight=0.0)
  params = init(model, objective)
  batch = task_batch(jax.random.PRNGKey(4), 3, 4, 4)
  scores, _ = objectives.task_scores(model, "choice", 1, params, batch, None)
  _, loss = one_step(params, batch, objective, 1)
  task, _ = by_hand(model, params, batch, "choice")
  np.testing.assert_allclose(loss, task, rtol=1e-5)
  order = np.array([2, 0, 3, 1])
  permuted = dict(
    batch,
    tokens=batch["tokens"][:, order],
    weights=batch["weights"][:, order],
    extract=batch["extract"][:, order],
    label=np.argsort(order)[batch["label"]].astype(np.int32),
  )
  permuted_scores, _ = objectives.task_scores(model, "choice", 1, params, permuted, None)
  np.testing.assert_allclose(permuted_scores, np.asarray(scores)[:, order], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(order[np.argmax(permuted_scores, -1)], np.argmax(scores, -1))
  _, permuted_loss = one_step(params, permuted, objective, 1)
  np.testing.assert_allclose(permuted_loss, loss, rtol=1e-5)
