"""benchmarks/torch_reference.py times gptjax's own model and optimizer in PyTorch.

The same weights, loaded into both through gptjax.convert's GPT-2 names, give the same
logits, and the same training steps give the same losses and weights, so the
benchmark's comparison is model for model.
"""

import importlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gptjax import convert, flops, optim, sharding, train  # noqa: E402
from gptjax.model import GPT, model_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))  # the scripts import their siblings
shapes = importlib.import_module("shapes")
torch_reference = importlib.import_module("torch_reference")

TINY = "2/2/32/16/4"  # layers/heads/width/context/batch


def _text() -> bytes:
  with open(os.path.join(ROOT, "README.md"), "rb") as f:
    return f.read()


def _torch_model(params, c):
  """The reference holding gptjax's `params` (strict: every tensor named and shaped)."""
  model = torch_reference.GPT(c.model)
  state = {k: torch.tensor(v) for k, v in convert.hf_tensors(params, c.model).items()}
  model.load_state_dict(state, strict=True)
  return model


@pytest.mark.parametrize("shape", ["4/4/128/64/12", "4/4/256/256/16", "9/6/384/256/16"])
def test_parameter_count_is_gptjax_at_the_benchmark_shapes(shape):
  c = shapes.run_config(shape, steps=1)
  model = torch_reference.GPT(c.model)
  assert sum(p.numel() for p in model.parameters()) == flops.param_counts(c.model)["n_params"]


def test_same_weights_give_the_same_logits():
  """The reference's weights, read into gptjax by convert.params_from_hf (which refuses a
  missing or extra tensor), give gptjax's logits."""
  c = shapes.run_config(TINY, steps=1)
  model = torch_reference.GPT(c.model)
  rng = np.random.default_rng(0)
  # Noise moves the LayerNorms and biases off their init, so each is checked too.
  weights = {
    k: v.numpy() + rng.normal(0.0, 0.05, v.shape).astype(np.float32)
    for k, v in model.state_dict().items()
  }
  model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
  params = convert.params_from_hf(
    {k.removeprefix("transformer."): v for k, v in weights.items()}, c.model
  )
  tokens = shapes.batches(_text(), 4, c.model.seq_len, 1)[0][:, :-1]
  expected, _ = jax.jit(GPT(model_config(c.model)).apply)({"params": params}, tokens)
  with torch.no_grad():
    got = model(torch.from_numpy(tokens).long())
  assert got.shape == expected.shape
  np.testing.assert_allclose(got.numpy(), np.asarray(expected), atol=2e-5, rtol=0)


def test_learning_rate_is_gptjax_schedule():
  c = shapes.run_config(TINY, steps=40)
  c.optim.warmup_steps = 7
  lrs = [torch_reference.learning_rate(c.optim, c.train.steps, s) for s in range(c.train.steps)]
  np.testing.assert_allclose(lrs, [float(optim.schedule(c)(s)) for s in range(40)], rtol=1e-6)


@pytest.mark.slow
def test_training_steps_match_gptjax_train_step():
  """Three updates of gptjax's jitted train step and of the reference from the same weights:
  warmup and cosine learning rates, clipping that takes (checked) and weight decay large
  enough that decaying the wrong parameters would show in the weights."""
  c = shapes.run_config(TINY, steps=3)
  c.optim.update(lr=1e-2, warmup_steps=1, weight_decay=0.5, clip_norm=0.5)
  program = train.build(c, sharding.make_mesh(c.mesh, jax.devices()[:1]), eos_id=0)
  state = program.init(0)
  model = _torch_model(state.params, c)
  opt = torch_reference.optimizer(model, c.optim)
  for step, rows in enumerate(shapes.batches(_text(), 4, c.model.seq_len, c.train.steps)):
    lr = torch_reference.learning_rate(c.optim, c.train.steps, step)
    got = torch_reference.train_step(
      model, opt, torch.from_numpy(rows).long(), lr, c.optim.clip_norm
    )
    state, window = program.train_step(state, train.Window.zeros(), {"tokens": jnp.asarray(rows)})
    assert float(window.grad_norm_sum) > c.optim.clip_norm  # the clip changed the update
    np.testing.assert_allclose(float(got), float(window.loss_sum), rtol=1e-5)
  expected = convert.hf_tensors(state.params, c.model)
  got = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  assert got.keys() == expected.keys()
  for name, value in expected.items():
    np.testing.assert_allclose(got[name], value, atol=5e-5, rtol=0, err_msg=name)
