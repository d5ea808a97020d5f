"""Training throughput on this machine: tokens/s, MFU and step-time percentiles per shape.

    python benchmarks/throughput.py [--shapes=4/4/128/64/12,4/4/256/256/16,9/6/384/256/16]
        [--layers=loop,unrolled,blocks] [--steps=40] [--text=README.md] [--nokeep_freed_memory]
        [--cpu_devices=0] [--attention_impl=blocks]

A shape is layers/heads/width/context/batch. The defaults are the three shapes of
issue 18: nanoGPT's CPU shakespeare-char recipe (0.8M), the quick start's (3.2M) and
a 16M model, float32, byte-level tokens of --text (any local text; speed does not
depend on which). --layers picks how the blocks are compiled: `loop` (nn.scan, one
block in a loop: model.scan_unroll=1, the default before it existed), `unrolled`
(nn.scan unrolled: scan_unroll=n_layer, the same stacked parameters) and `blocks`
(model.scan_layers=False: one module per block). Each shape runs the real jitted train step of `train.build`
(AdamW, donated state, the window sums) on the CPU devices (one accelerator); the first --warmup steps are
left out (compilation and first-touch allocation). Step times are wall seconds per
step with the step's result awaited, so they include dispatch; tokens/s is tokens
over the summed step times. MFU divides the FLOPs-per-token convention of
gptjax.flops by the cached CPU peak (or the accelerator's datasheet peak). On CPU,
glibc keeps freed memory for reuse as in training (gptjax.host_malloc);
--nokeep_freed_memory times glibc's defaults instead. On CPU the host is split into
--cpu_devices XLA devices with the batch split over them, as `python -m gptjax.main` does
(gptjax.cpu_devices; 0 = one per core that divides every shape's batch, the default; 1 = one).
--attention_impl sets model.attention_impl (`xla` was the default before `blocks`).
"""

from __future__ import annotations

import time

import jax
import numpy as np
import shapes
from absl import app, flags
from shapes import batches

from gptjax import config as config_lib
from gptjax import cpu_devices, flops, host_malloc, sharding, train

# The shapes, steps and text are shared with torch_reference.py (benchmarks/shapes.py).
_SHAPES, _STEPS, _WARMUP, _TEXT = shapes.SHAPES, shapes.STEPS, shapes.WARMUP, shapes.TEXT

LAYERS = {  # --layers name -> (model.scan_layers, model.scan_unroll or None for n_layer)
  "loop": (True, 1),
  "unrolled": (True, None),
  "blocks": (False, 1),
}
_LAYERS = flags.DEFINE_list("layers", list(LAYERS), f"How the blocks are compiled: {list(LAYERS)}.")
_KEEP_FREED = flags.DEFINE_bool(
  "keep_freed_memory", True, "On CPU, keep freed memory for reuse, as training does."
)
_CPU_DEVICES = flags.DEFINE_integer(
  "cpu_devices",
  0,
  "CPU devices to split the host into (0: one per core, as training does; 1: one).",
)

_ATTENTION = flags.DEFINE_enum(
  "attention_impl",
  config_lib.base_config().model.attention_impl,
  config_lib.ATTENTION_IMPLS,
  "model.attention_impl of every shape.",
)


def shape_config(shape: str, layers: str) -> config_lib.ml_collections.ConfigDict:
  """The run config of one 'layers/heads/width/context/batch' shape, float32, bytes, with
  the blocks compiled as `layers` (a --layers name) says."""
  c = shapes.run_config(shape, _WARMUP.value + _STEPS.value)
  scan_layers, unroll = LAYERS[layers]
  c.model.update(scan_layers=scan_layers, scan_unroll=unroll or c.model.n_layer)
  c.mesh.cpu_devices = _CPU_DEVICES.value
  c.model.attention_impl = _ATTENTION.value
  config_lib.validate(c)
  return c


def time_shape(shape: str, layers: str, text: bytes) -> dict[str, float]:
  c = shape_config(shape, layers)
  cpu = jax.default_backend() == "cpu"
  mesh = sharding.make_mesh(c.mesh, jax.devices() if cpu else jax.devices()[:1])
  program = train.build(c, mesh, eos_id=0)
  state = program.init(0)
  window = jax.device_put(train.Window.zeros(), sharding.replicated(mesh))
  steps = _WARMUP.value + _STEPS.value
  feed = [
    {"tokens": jax.device_put(b, program.batch_shardings["tokens"])}
    for b in batches(text, c.train.batch_size, c.model.seq_len, steps)
  ]
  times = []
  for i, batch in enumerate(feed):
    start = time.perf_counter()
    state, window = program.train_step(state, window, batch)
    jax.block_until_ready(window)
    if i >= _WARMUP.value:
      times.append(time.perf_counter() - start)
  tokens = c.train.batch_size * c.model.seq_len
  tok_s = tokens * len(times) / sum(times)
  peak, _ = flops.device_peak(0.0, c.model.dtype)
  return {
    "params": flops.param_counts(c.model)["n_params"],
    "tok_s": tok_s,
    "mfu": tok_s * flops.flops_per_token(c.model) / (peak * 1e12) if peak else float("nan"),
    "p50_ms": 1e3 * float(np.percentile(times, 50)),
    "p90_ms": 1e3 * float(np.percentile(times, 90)),
    "loss": float(window.loss_sum / window.steps),
  }


def main(argv: list[str]) -> None:
  del argv
  with open(_TEXT.value, "rb") as f:
    text = f.read()
  unknown = sorted(set(_LAYERS.value) - set(LAYERS))
  if unknown:
    raise app.UsageError(f"--layers: unknown {unknown}; use {list(LAYERS)}")
  if _CPU_DEVICES.value < 0:
    raise app.UsageError(
      f"--cpu_devices={_CPU_DEVICES.value}: use 1 (one device), 0 (one per core) or a count"
    )
  cores = cpu_devices.host_cores()
  memory = cpu_devices.host_memory_bytes()
  count = min(cpu_devices.choose(shape_config(s, "loop"), cores, memory) for s in _SHAPES.value)
  jax.config.update("jax_num_cpu_devices", count)  # before the backend starts
  kept = _KEEP_FREED.value and jax.default_backend() == "cpu" and host_malloc.keep_freed_memory()
  _, peak_note = flops.device_peak(0.0, "float32")
  print(
    f"{jax.devices()[0].device_kind} x {jax.device_count()}; MFU peak: {peak_note}; "
    f"attention: {_ATTENTION.value}; "
    f"freed memory kept: {kept}"
  )
  print(
    f"{'shape (L/H/W/T/B)':<18} {'layers':>8} {'params':>10} {'tok/s':>9} {'MFU':>6} "
    f"{'p50 ms':>8} {'p90 ms':>8} {'mean loss':>9}"
  )
  for shape in _SHAPES.value:
    for layers in _LAYERS.value:
      r = time_shape(shape, layers, text)
      print(
        f"{shape:<18} {layers:>8} {r['params']:>10,} {r['tok_s']:>9,.0f} "
        f"{100 * r['mfu']:>5.1f}% {r['p50_ms']:>8.1f} {r['p90_ms']:>8.1f} {r['loss']:>9.4f}",
        flush=True,
      )


if __name__ == "__main__":
  app.run(main)
