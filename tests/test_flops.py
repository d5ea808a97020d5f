"""Tests for gptjax.flops: the analytic counts behind every MFU and scaling-law
number, pinned to published sizes and to the real flax parameter trees."""

from __future__ import annotations

import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from gptjax import flops
from gptjax.config import base_config
from gptjax.model import GPT, model_config
from gptjax.scaling import families


def real_param_count(model_cfg: ml_collections.ConfigDict) -> int:
  """Parameters in the flax tree, from shapes only (jax.eval_shape allocates nothing)."""
  model = GPT(model_config(model_cfg))
  tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), tokens)["params"])
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))


@pytest.mark.parametrize(
  "size,n_params",
  [("small", 124_439_808), ("medium", 354_823_168), ("large", 774_030_080), ("xl", 1_557_611_200)],
)
def test_gpt2_param_counts_match_the_release(size: str, n_params: int) -> None:
  """These are the published GPT-2 sizes (tied embedding counted once); every report
  and scaling fit quotes them, so they must be exact."""
  assert flops.param_counts(families.gpt2(size).model)["n_params"] == n_params


def test_gpt2_small_non_embedding_count() -> None:
  """Kaplan's N (no token or position embeddings) is the x-axis of scaling laws."""
  assert flops.param_counts(families.gpt2("small").model)["n_params_non_embedding"] == 85_056_000


def test_analytic_count_equals_gpt2_small_tree() -> None:
  """The analytic formula must describe the model that is actually built, not an
  idealised one; checked at full GPT-2 small size without allocating it."""
  cfg = families.gpt2("small").model
  assert real_param_count(cfg) == flops.param_counts(cfg)["n_params"] == 124_439_808


@pytest.mark.parametrize("architecture", ["gpt2", "gpt1"])
@pytest.mark.parametrize("scan_layers", [True, False])
@pytest.mark.parametrize("pad_vocab_multiple", [1, 64])
def test_analytic_count_equals_tiny_trees(
  architecture: str, scan_layers: bool, pad_vocab_multiple: int
) -> None:
  """GPT-1 has no final LayerNorm and padding adds embedding rows; the count must
  follow both, whatever the layer layout."""
  c = base_config().model
  c.update(
    dict(
      architecture=architecture,
      scan_layers=scan_layers,
      pad_vocab_multiple=pad_vocab_multiple,
      n_layer=3,
      d_model=48,
      n_head=4,
      d_ff=96,
      vocab_size=101,
      seq_len=16,
    )
  )
  counts = flops.param_counts(c)
  assert real_param_count(c) == counts["n_params"]
  embedding = (128 if pad_vocab_multiple == 64 else 101) * 48 + 16 * 48
  assert counts["n_params"] - counts["n_params_non_embedding"] == embedding


@pytest.mark.parametrize("size", list(families.GPT3_SIZES))
def test_gpt3_counts_within_two_percent_of_the_paper(size: str) -> None:
  """The GPT-3 shapes (Table 2.1) must reproduce the paper's model sizes; a wrong
  d_ff, context or layer count would be off by far more than 2%."""
  paper = families.GPT3_SIZES[size][5]
  n_params = flops.param_counts(families.gpt3(size).model)["n_params"]
  assert abs(n_params / paper - 1) < 0.02, (n_params, paper)


def test_flops_per_token_gpt2_small_by_hand() -> None:
  """DESIGN §6: 6*N_matmul + 6*n_layer*d_model*seq_len, with
  N_matmul = 12*(4*768^2 + 2*768*3072) + 50257*768 = 123,532,032."""
  n_matmul = 12 * (4 * 768**2 + 2 * 768 * 3072) + 50257 * 768
  assert n_matmul == 123_532_032
  assert 6 * n_matmul + 6 * 12 * 768 * 1024 == 797_815_296
  assert flops.flops_per_token(families.gpt2("small").model) == 797_815_296


def test_device_peak_configured_value_wins() -> None:
  """An explicit train.peak_tflops must be used as given, on any device."""
  peak, note = flops.device_peak(123.0)
  assert peak == 123.0
  assert "123" in note


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the measured fallback is CPU-only")
def test_device_peak_is_measured_on_cpu() -> None:
  """On CPU there is no datasheet peak; MFU divides by a measured matmul rate and the
  note must say so (DESIGN §6), otherwise CPU MFU numbers are unexplained."""
  peak, note = flops.device_peak(0.0)
  assert peak > 0.0 and math.isfinite(peak)
  assert "measured" in note.lower()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the cached peak is CPU-only")
def test_cpu_peak_is_measured_once_per_host_and_read_back(isolated_cache) -> None:
  """The CPU peak is cached under $GPTJAX_CACHE by host, so MFU does not move with one start's
  load: what the cache file holds is what every later start uses."""
  first, path = flops.cpu_peak_tflops()
  assert path == os.path.join(isolated_cache, flops.CPU_PEAK_FILE)
  entries = json.load(open(path))
  assert list(entries.values()) == [first] and first > 0
  (key,) = entries
  json.dump({key: 0.5, "another host": 9.0}, open(path, "w"))
  assert flops.cpu_peak_tflops()[0] == 0.5
  peak, note = flops.device_peak(0.0)
  assert peak == 0.5 and path in note and "500.0 GFLOP/s" in note


@pytest.mark.parametrize(
  "kind, peak",
  [
    ("NVIDIA H100 80GB HBM3", 989.0),
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("TPU v5 lite", 197.0),
    ("TPU v5", 459.0),
    ("NVIDIA GeForce RTX 4090", None),
  ],
)
def test_peak_table_tells_the_h100_variants_apart(kind, peak) -> None:
  """A PCIe or NVL H100 charged the SXM peak would understate its MFU by 24% or 16%."""
  assert flops.peak_for_kind(kind) == peak


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="simulated devices are CPU-only")
def test_cpu_peak_counts_hosts_not_simulated_devices() -> None:
  """The 8 simulated test devices share one host's measured matmul rate."""
  assert jax.device_count() == 8
  assert flops.peak_units() == jax.process_count() == 1
