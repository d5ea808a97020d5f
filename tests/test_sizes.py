"""Size families: shapes from N targets, per-size lr and token rules."""

import importlib.util
import math
import os

import numpy as np
import pytest

from gptjax import config as config_lib
from gptjax import flops
from gptjax.config import base_config
from gptjax.scaling import families, sizes


def test_shape_follows_the_aspect_ratio_with_64_wide_heads():
  assert sizes.shape(4) == {
    "model.n_layer": 4,
    "model.d_model": 256,
    "model.n_head": 4,
    "model.d_ff": 1024,
  }
  assert sizes.shape(3, ratio=128) == {
    "model.n_layer": 3,
    "model.d_model": 384,
    "model.n_head": 6,
    "model.d_ff": 1536,
  }
  with pytest.raises(ValueError, match="ratio=100"):
    sizes.shape(2, ratio=100)


@pytest.mark.parametrize(
  "target, ratio, n_layer",
  [
    (1e6, 64, 3),  # candidates 397K, 1.33M: 1.33M is closer in log N
    (3e6, 64, 4),  # 3.16M
    (5e4, 64, 1),  # 50,112
    (85e6, 128, 8),  # d_model 1024, GPT-3 Small's non-embedding size
  ],
)
def test_shape_for_params_picks_the_closest_depth(target, ratio, n_layer):
  shape = sizes.shape_for_params(target, ratio)
  assert shape["model.n_layer"] == n_layer
  n = sizes.non_embedding_params(shape)
  for other in (n_layer - 1, n_layer + 1):
    if other >= 1:
      assert abs(math.log(n / target)) <= abs(
        math.log(sizes.non_embedding_params(sizes.shape(other, ratio)) / target)
      )


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
  members = sizes.family_for_params(
    [5e4, 4e5, 1.3e6], base, lr_rule="kaplan", tokens_rule="isoflop", tokens_value=1e15
  )
  assert list(members) == ["l1-d64", "l2-d128", "l3-d192"]
  for overrides in members.values():
    model = sizes.model_config(overrides, base)
    n = flops.param_counts(model)["n_params_non_embedding"]
    assert overrides["optim.lr"] == pytest.approx(sizes.peak_lr(n, "kaplan"))
    assert overrides["train.tokens"] == round(1e15 / flops.flops_per_token(model))
  with pytest.raises(ValueError, match="repeated depths"):
    sizes.family_for_params([1e6, 1.1e6], base)


def test_budget_names_are_digits_and_read_back_as_the_budget():
  for compute in (1.5e12, 5e12, 1.5e13, 2e14, 1.234e18):
    name = sizes.budget_name(compute)
    assert name.startswith("c") and name[1:].replace("e", "").isdigit()
    assert float(name[1:]) == pytest.approx(compute, rel=1e-12)


def test_isoflop_family_spends_each_budget_on_every_size():
  base = base_config()
  budgets = {1e13: [(1, 64), (2, 64), (2, 128)], 1e14: [(2, 64), (2, 128), (3, 192)]}
  members = sizes.isoflop_family(budgets, base, lr_rule="kaplan")
  assert list(members) == [
    "c1e13-l1-d64",
    "c1e13-l2-d64",
    "c1e13-l2-d128",
    "c1e14-l2-d64",
    "c1e14-l2-d128",
    "c1e14-l3-d192",
  ]
  for name, overrides in members.items():
    model = sizes.model_config(overrides, base)
    spent = overrides["train.tokens"] * flops.flops_per_token(model)
    assert spent == pytest.approx(float(name.split("-")[0][1:]), rel=1e-6)
    assert model.d_model // model.n_head == sizes.D_HEAD
  with pytest.raises(ValueError, match="needs >= 3 sizes"):
    sizes.isoflop_family({1e13: [(1, 64), (2, 64)]}, base)
  with pytest.raises(ValueError, match="d_model=96"):
    sizes.free_shape(2, 96)


def _experiment(name: str):
  path = os.path.join(os.path.dirname(__file__), "..", "experiments", f"{name}.py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _member_configs(module):
  for name, overrides in module.get_sweep().items():
    c = config_lib.override(module.get_config(), overrides)
    config_lib.validate(c)
    yield name, c


def test_isoflop_cpu_has_three_budgets_of_at_least_four_sizes_spanning_a_decade():
  module = _experiment("isoflop_cpu")
  budgets: dict[str, list[int]] = {}
  for name, c in _member_configs(module):
    budgets.setdefault(name.split("-")[0], []).append(
      flops.param_counts(c.model)["n_params_non_embedding"]
    )
    assert c.train.tokens // (c.train.batch_size * c.model.seq_len) >= 100  # updates
  assert len(budgets) >= 3
  for ns in budgets.values():
    assert len(ns) >= 4 and max(ns) / min(ns) >= 10  # a decade around each optimum


def test_gpt3_ladder_members_are_the_papers_models_on_twenty_tokens_per_parameter():
  module = _experiment("gpt3_ladder")
  counts = {}
  for name, c in _member_configs(module):
    n = flops.param_counts(c.model)
    assert c.train.tokens == round(20 * n["n_params_non_embedding"])
    counts[name] = n["n_params"]
  assert list(counts) == [
    "gpt3-125m",
    "gpt3-350m",
    "gpt3-760m",
    "gpt3-1p3b",
    "gpt3-2p7b",
    "gpt3-6p7b",
  ]
  for name, paper in zip(counts, (125e6, 350e6, 760e6, 1.3e9, 2.7e9, 6.7e9)):
    assert counts[name] == pytest.approx(paper, rel=0.03)


def test_lr_for_params_follows_gpt3_table_2_1():
  """Exact at the paper's rows, log-log between them (the geometric mean at the log
  midpoint), monotone over 1e5..175B, Kaplan's shape below 125M, refused above 175B."""
  rows = {125e6: 6e-4, 350e6: 3e-4, 760e6: 2.5e-4, 1.3e9: 2e-4, 2.7e9: 1.6e-4}
  rows.update({6.7e9: 1.2e-4, 13e9: 1e-4, 175e9: 0.6e-4})
  for n, lr in rows.items():
    assert families.lr_for_params(n) == lr
  assert families.lr_for_params(math.sqrt(125e6 * 350e6)) == pytest.approx(math.sqrt(6e-4 * 3e-4))
  grid = np.geomspace(1e5, 175e9, 2000)
  lrs = np.array([families.lr_for_params(n) for n in grid])
  assert np.all(np.diff(lrs) < 0) and np.all(lrs > 0)
  kaplan = lambda n: 0.003239 - 0.0001395 * math.log(n)  # noqa: E731
  assert families.lr_for_params(1e7) == pytest.approx(6e-4 * kaplan(1e7) / kaplan(125e6))
  assert families.KAPLAN_LR_ZERO == pytest.approx(1.2126e10, rel=1e-3)
  assert kaplan(families.KAPLAN_LR_ZERO * 1.01) < 0  # why nothing is extrapolated above
  with pytest.raises(ValueError, match="above GPT-3's largest model"):
    families.lr_for_params(176e9)
  with pytest.raises(ValueError, match="must be > 0"):
    families.lr_for_params(0)
