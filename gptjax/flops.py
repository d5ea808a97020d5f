"""Parameter counts, FLOPs per token, device peaks and MFU (DESIGN.md §6).

Counts are analytic so they can be stated for configs too large to build here;
tests pin them to the real parameter trees.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import socket
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gptjax.config import padded_vocab_size

CPU_PEAK_FILE = "cpu_peak.json"  # under $GPTJAX_CACHE: {host key: float32 matmul TFLOP/s}

# Dense bf16 peak TFLOP/s per device, matched against jax's device_kind (the longest
# matching name wins, so "H100 PCIe" beats "H100"). Vendor datasheets, dense (not sparse).
PEAK_TFLOPS = {
  "H200": 989.0,
  "H100": 989.0,  # SXM ("NVIDIA H100 80GB HBM3")
  "H100 PCIe": 756.0,
  "H100 NVL": 835.0,
  "A100": 312.0,
  "TPU v4": 275.0,
  "TPU v5 lite": 197.0,  # v5e
  "TPU v5e": 197.0,
  "TPU v5p": 459.0,
  "TPU v5": 459.0,  # v5p reports itself as "TPU v5"
  "TPU v6 lite": 918.0,  # v6e
  "TPU v6e": 918.0,
}


def param_counts(model: ml_collections.ConfigDict) -> dict[str, int]:
  """Total and non-embedding parameters; the tied embedding is counted once.

  n_params_non_embedding is Kaplan et al.'s N: everything but the token and
  position embeddings (biases and LayerNorms included).
  """
  d, ff, n_layer = model.d_model, model.d_ff, model.n_layer
  attn = d * 3 * d + 3 * d + d * d + d
  mlp = d * ff + ff + ff * d + d
  layer_norms = 2 * 2 * d
  final_norm = 2 * d if model.architecture == "gpt2" else 0
  non_embedding = n_layer * (attn + mlp + layer_norms) + final_norm
  embedding = padded_vocab_size(model) * d + model.seq_len * d
  return {"n_params": non_embedding + embedding, "n_params_non_embedding": non_embedding}


def matmul_params(model: ml_collections.ConfigDict) -> int:
  """Parameters that take part in a matmul: block weights plus the LM head."""
  d = model.d_model
  return model.n_layer * (4 * d * d + 2 * d * model.d_ff) + padded_vocab_size(model) * d


def flops_per_token(model: ml_collections.ConfigDict, context: int | None = None) -> int:
  """Training FLOPs per token: 6 * N_matmul + 6 * n_layer * d_model * seq_len.

  The attention term is 12 * L * d * T halved for the causal mask, as llm.c and
  MaxText count it. `context` is T when the sequences are shorter than
  model.seq_len (a sequence-length warmup stage).
  """
  context = model.seq_len if context is None else context
  return 6 * matmul_params(model) + 6 * model.n_layer * model.d_model * context


def measured_cpu_tflops(size: int = 1024, blocks: int = 5, repeats: int = 10) -> float:
  """A float32 matmul rate for this host: the best of `blocks` timings of `repeats` matmuls.

  The best block, not the mean: a peak is what the host can do, and other work on
  the machine only ever slows a block down (5 repeats once read 284-444 GFLOP/s over
  22 starts on one 2-core machine).
  """
  a = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  best = 0.0
  for _ in range(blocks):
    start = time.perf_counter()
    for _ in range(repeats):
      matmul(a).block_until_ready()
    best = max(best, 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12)
  return best


def _host_key() -> str:
  """What a CPU peak depends on: the processor, the cores this process may use, and the XLA."""
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      model = next(
        (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model
      )
  except OSError:
    pass
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return f"{model} | {cores} cores | jaxlib {jax.lib.__version__}"


def cpu_peak_tflops() -> tuple[float, str]:
  """This host's CPU peak for MFU, measured once and cached in $GPTJAX_CACHE/cpu_peak.json.

  Measuring at every start cost ~2 s and made MFU swing with the machine's load; the
  cached value is one careful measurement per (processor, cores, jaxlib). Returns the
  peak and the cache file. Delete the file (or its entry) to measure again.
  """
  from gptjax.data import paths  # the cache root; data is imported by every run anyway

  path = os.path.join(paths.cache_root(), CPU_PEAK_FILE)
  key = _host_key()
  try:
    with open(path) as f:
      cached = json.load(f)
  except (OSError, ValueError):
    cached = {}
  if not isinstance(cached.get(key), (int, float)) or cached[key] <= 0:
    cached[key] = measured_cpu_tflops()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    paths.atomic_write_bytes(path, json.dumps(cached, indent=2).encode())
  return float(cached[key]), path


@functools.cache
def peak_units() -> int:
  """How many peaks the job has: one per device, but one per host on CPU.

  Simulated CPU devices (--xla_force_host_platform_device_count) share one host's
  cores, and the CPU 'peak' is measured for the whole host, so multiplying it by
  the simulated device count would shrink MFU by that factor; likewise for several
  processes on one host (`launch local`), which are counted by their host names. Every
  process must call it (the names are gathered), as the train loop's start does.
  """
  if jax.default_backend() != "cpu":
    return jax.device_count()
  if jax.process_count() == 1:
    return 1
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  host = hashlib.sha256(socket.gethostname().encode()).digest()[:4]
  hosts = multihost_utils.process_allgather(np.frombuffer(host, np.int32))
  return len(np.unique(np.asarray(hosts)))


def peak_for_kind(kind: str) -> float | None:
  """The bf16 dense peak TFLOP/s of a jax device_kind, or None if the table lacks it."""
  for name, peak in sorted(PEAK_TFLOPS.items(), key=lambda kv: -len(kv[0])):
    if name.lower() in kind.lower():
      return peak
  return None


def device_peak(
  configured_tflops: float = 0.0, compute_dtype: str = "bfloat16"
) -> tuple[float, str]:
  """Peak TFLOP/s per unit of `peak_units()` for MFU (0 when unknown), and a sentence
  saying where it came from.

  Accelerator peaks are bf16 dense figures; a float32 run is still divided by
  them, and the sentence says so (MFU is then bf16-relative).
  """
  kind = jax.devices()[0].device_kind
  if configured_tflops > 0:
    return configured_tflops, f"train.peak_tflops={configured_tflops:g} TFLOP/s ({kind})"
  peak = peak_for_kind(kind)
  if peak is not None:
    relative = (
      ""
      if compute_dtype == "bfloat16"
      else f"; this run computes in {compute_dtype}, so its MFU is bf16-relative"
    )
    return peak, f"{kind} bf16 dense peak {peak:g} TFLOP/s per device{relative}"
  if jax.default_backend() == "cpu":
    peak, path = cpu_peak_tflops()
    return peak, (
      f"CPU float32 1024x1024 matmul, best of 5x10 measured once for this host "
      f"({path}): {peak * 1e3:.1f} GFLOP/s per host"
    )
  return 0.0, f"no peak known for {kind!r}: MFU not reported; set train.peak_tflops"
