"""Decoding speed: prefill and decode tokens/s, time to first token, and what one-pass prefill
saves over feeding a prompt token by token.

    python benchmarks/decode.py [--models=quickstart,gpt2_small] [--batch_sizes=1,32]

Models are randomly initialised at the shapes of experiments/MODEL.py (speed does not depend
on the weights). Each figure is the second of two identical calls, so compilation (timed
apart) and first-touch allocation are left out. Decoding is greedy over random prompt ids;
a row that meets end-of-text keeps its slot, and decode tokens/s counts rows x steps run.
On a GPU, --hbm_gbps=BANDWIDTH adds decode at batch 1 as a fraction of the memory-bandwidth
bound: (parameter bytes + KV-cache bytes read per token) / step time, over that bandwidth.
"""

from __future__ import annotations

import os
import runpy
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from gptjax import generate
from gptjax.model import GPT, init_cache, model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MODELS = flags.DEFINE_list("models", ["quickstart", "gpt2_small"], "experiments/NAME.py shapes.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "32"], "Prompts decoded together.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 64, "Tokens generated per row.")
_PROMPT_LEN = flags.DEFINE_integer(
  "prompt_len", 512, "Prompt tokens (at most the model's context minus --new_tokens)."
)
_HBM_GBPS = flags.DEFINE_float("hbm_gbps", 0.0, "GPU only: the chip's HBM bandwidth in GB/s.")


class _Ids:
  """Random prompts need no text: a tokenizer with the model's vocabulary and no decoding."""

  def __init__(self, vocab_size: int):
    self.vocab_size, self.eos_id = vocab_size, vocab_size - 1

  def decode(self, ids: list[int]) -> str:
    return ""


def _timed(fn, *args) -> float:
  """Seconds of the second of two calls (the first compiles)."""
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def token_by_token_s(model: GPT, params: Any, prompt: np.ndarray, cache_len: int) -> float:
  """Seconds to feed `prompt` [1, length] through the KV cache one token per step, all in one
  compiled loop (so Python dispatch is not what is measured)."""

  @jax.jit
  def feed(params, prompt):
    def step(i, carry):
      _, cache = carry
      return generate._next_logits(model, params, cache, prompt[:, i], jnp.full((1,), i))

    first = (jnp.zeros((1, model.config.vocab_size)), init_cache(model.config, 1, cache_len))
    return jax.lax.fori_loop(0, prompt.shape[1], step, first)[0]

  return _timed(feed, params, prompt)


def bench_model(name: str) -> None:
  config = runpy.run_path(os.path.join(ROOT, "experiments", f"{name}.py"))["get_config"]()
  model = GPT(model_config(config.model))
  cfg = model.config
  params = nn.unbox(
    jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, cfg.seq_len), jnp.int32))["params"]
  )
  n_params = sum(a.size for a in jax.tree.leaves(params))
  prompt_len = min(_PROMPT_LEN.value, cfg.seq_len - _NEW_TOKENS.value)
  print(
    f"\n{name}: {n_params:,} parameters, {cfg.n_layer} layers, d_model {cfg.d_model}, "
    f"context {cfg.seq_len}, {cfg.dtype.name}; prompts of {prompt_len} tokens, "
    f"{_NEW_TOKENS.value} new tokens, greedy"
  )
  rng = np.random.default_rng(0)
  tokenizer = _Ids(cfg.vocab_size)
  settings = generate.Settings(max_new_tokens=_NEW_TOKENS.value)
  step_s_at_1 = None
  for batch in map(int, _BATCH_SIZES.value):
    prompts = rng.integers(0, cfg.vocab_size - 1, (batch, prompt_len)).tolist()
    decoder = generate.Decoder(model, params, tokenizer)
    decoder.generate(prompts, settings)  # compiles; the figures come from the second call
    compile_s = decoder.stats.compile_s
    decoder.stats = generate.Stats()
    decoder.generate(prompts, settings)
    s = decoder.stats
    steps = s.decode_tokens // batch
    print(
      f"  batch {batch:>3}: prefill {s.prompt_tokens / s.prefill_s:>10,.0f} tokens/s | "
      f"decode {s.decode_tokens / s.decode_s:>8,.1f} tokens/s ({steps} steps, "
      f"{1000 * s.decode_s / steps:.1f} ms/step) | time to first token "
      f"{1000 * s.prefill_s:,.0f} ms | compile {compile_s:.1f} s"
    )
    if batch == 1:
      step_s_at_1 = s.decode_s / steps
      one_pass = s.prefill_s
      sequential = token_by_token_s(
        model, params, np.asarray(prompts, np.int32), prompt_len + _NEW_TOKENS.value
      )
      print(
        f"  prefill of one {prompt_len}-token prompt: one pass {1000 * one_pass:,.0f} ms vs "
        f"token by token {1000 * sequential:,.0f} ms: {sequential / one_pass:.1f}x faster"
      )
  if step_s_at_1 is None:
    return
  if jax.default_backend() != "gpu":
    print(f"  memory-bandwidth bound: not measured ({jax.default_backend()}; GPU only)")
  elif not _HBM_GBPS.value:
    print("  memory-bandwidth bound: pass --hbm_gbps=BANDWIDTH of this GPU")
  else:
    param_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(params))
    # Per step, attention reads the keys and values of the whole cache (prompt bucket + new).
    cache_len = generate.bucket(prompt_len, cfg.seq_len - _NEW_TOKENS.value) + _NEW_TOKENS.value
    kv_bytes = 2 * cfg.n_layer * cache_len * cfg.d_model * cfg.dtype.itemsize
    achieved = (param_bytes + kv_bytes) / step_s_at_1 / 1e9
    print(
      f"  decode at batch 1 reads {(param_bytes + kv_bytes) / 1e6:,.0f} MB per step: "
      f"{achieved:,.0f} GB/s = {100 * achieved / _HBM_GBPS.value:.0f}% of "
      f"{_HBM_GBPS.value:,.0f} GB/s"
    )


def main(argv: list[str]) -> None:
  del argv
  print(
    f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.default_backend()}), "
    f"{jax.device_count()} device(s), {os.cpu_count()} CPUs"
  )
  for name in _MODELS.value:
    bench_model(name)


if __name__ == "__main__":
  app.run(main)
