"""Size families: shapes from N targets, per-size lr and token rules."""

import math

import pytest

from gptjax import flops
from gptjax.config import base_config
from gptjax.scaling import sizes


def test_shape_follows_the_aspect_ratio_with_64_wide_heads():
  assert sizes.shape(4) == {"model.n_layer": 4, "model.d_model": 256, "model.n_head": 4,
                            "model.d_ff": 1024}
  assert sizes.shape(3, ratio=128) == {"model.n_layer": 3, "model.d_model": 384,
                                       "model.n_head": 6, "model.d_ff": 1536}
  with pytest.raises(ValueError, match="ratio=100"):
    sizes.shape(2, ratio=100)


@pytest.mark.parametrize("target, ratio, n_layer", [
    (1e6, 64, 3),  # candidates 397K, 1.33M: 1.33M is closer in log N
    (3e6, 64, 4),  # 3.16M
    (5e4, 64, 1),  # 50,112
    (85e6, 128, 8),  # d_model 1024, GPT-3 Small's non-embedding size
])
def test_shape_for_params_picks_the_closest_depth(target, ratio, n_layer):
  shape = sizes.shape_for_params(target, ratio)
  assert shape["model.n_layer"] == n_layer
  n = sizes.non_embedding_params(shape)
  for other in (n_layer - 1, n_layer + 1):
    if other >= 1:
      assert abs(math.log(n / target)) <= abs(
          math.log(sizes.non_embedding_params(sizes.shape(other, ratio)) / target))


def test_non_embedding_params_matches_twelve_d_squared_per_layer():
  # 12 d^2 weights + 13 d biases/LayerNorm per layer, plus the final LayerNorm.
  assert sizes.non_embedding_params(sizes.shape(2)) == 2 * (12 * 128**2 + 13 * 128) + 2 * 128


def test_lr_rules():
  assert sizes.peak_lr(1e6, "kaplan") == pytest.approx(0.003239 - 0.0001395 * math.log(1e6))
  assert sizes.peak_lr(1e6, "constant", 2e-3) == 2e-3
  table = sizes._gpt3_table()
  assert sizes.peak_lr(table[0][0], "gpt3") == 6e-4  # GPT-3 Small
  assert sizes.peak_lr(1e5, "gpt3") == 6e-4  # clamped below the table
  assert sizes.peak_lr(1e13, "gpt3") == 0.6e-4  # clamped above it
  midpoint = math.sqrt(table[0][0] * table[1][0])  # halfway in log N from 125M to 350M
  assert sizes.peak_lr(midpoint, "gpt3") == pytest.approx(math.sqrt(6e-4 * 3e-4))
  with pytest.raises(ValueError, match="lr rule 'cosine'"):
    sizes.peak_lr(1e6, "cosine")
  with pytest.raises(ValueError, match="needs a value > 0"):
    sizes.peak_lr(1e6, "constant")


def test_token_rules_and_isoflop_budget():
  model = sizes.model_config(sizes.shape(3))
  n = flops.param_counts(model)["n_params_non_embedding"]
  assert sizes.train_tokens(model, "fixed", 1e6) == 1_000_000
  assert sizes.train_tokens(model, "ratio", 20) == 20 * n
  compute = 1e15
  d = sizes.isoflop_tokens(model, compute)
  assert d * flops.flops_per_token(model) == pytest.approx(compute, rel=1e-12)
  rounded = sizes.train_tokens(model, "isoflop", compute)
  assert abs(rounded * flops.flops_per_token(model) - compute) <= flops.flops_per_token(model) / 2
  with pytest.raises(ValueError, match="token rule 'chinchilla'"):
    sizes.train_tokens(model, "chinchilla", 20)


def test_family_members_validate_and_carry_their_rules():
  base = base_config()
  members = sizes.family_for_params([5e4, 4e5, 1.3e6], base, lr_rule="kaplan",
                                    tokens_rule="isoflop", tokens_value=1e15)
  assert list(members) == ["l1-d64", "l2-d128", "l3-d192"]
  for overrides in members.values():
    model = sizes.model_config(overrides, base)
    n = flops.param_counts(model)["n_params_non_embedding"]
    assert overrides["optim.lr"] == pytest.approx(sizes.peak_lr(n, "kaplan"))
    assert overrides["train.tokens"] == round(1e15 / flops.flops_per_token(model))
  with pytest.raises(ValueError, match="repeated depths"):
    sizes.family_for_params([1e6, 1.1e6], base)
