"""What the CPU training benchmarks share: the shapes, the flags that choose them, the data.

benchmarks/throughput.py times gptjax's train step on these shapes and
benchmarks/torch_reference.py a PyTorch GPT of the same shapes on the same bytes, so
their tables compare row by row. Nothing here imports jax: the PyTorch reference's
start-up is then a PyTorch program's, as nanoGPT's is.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np
from absl import flags

from gptjax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = flags.DEFINE_list(
  "shapes",
  ["4/4/128/64/12", "4/4/256/256/16", "9/6/384/256/16"],
  "layers/heads/width/context/batch of each model timed.",
)
STEPS = flags.DEFINE_integer("steps", 40, "Timed steps per shape.")
WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps first (the first compiles).")
TEXT = flags.DEFINE_string(
  "text", os.path.join(ROOT, "README.md"), "Local text to take bytes from."
)


def run_config(shape: str, steps: int) -> ml_collections.ConfigDict:
  """The run config of one 'layers/heads/width/context/batch' shape trained for `steps`
  updates: gptjax's defaults otherwise (AdamW and its schedule included), float32, bytes."""
  n_layer, n_head, d_model, seq_len, batch = (int(v) for v in shape.split("/"))
  c = config_lib.base_config()
  c.model.update(
    n_layer=n_layer,
    n_head=n_head,
    d_model=d_model,
    d_ff=4 * d_model,
    seq_len=seq_len,
    vocab_size=256,
  )
  c.train.batch_size = batch
  c.train.steps = steps
  config_lib.validate(c)
  return c


def batches(text: bytes, batch: int, seq_len: int, count: int) -> list[np.ndarray]:
  """`count` batches of consecutive byte windows [batch, seq_len + 1] of `text`, cycled."""
  ids = np.frombuffer(text, np.uint8).astype(np.int32)
  need = count * batch * (seq_len + 1)
  ids = np.resize(ids, need)  # repeats the text when it is shorter
  return list(ids.reshape(count, batch, seq_len + 1))
