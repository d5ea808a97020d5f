"""A same-shape PyTorch reference for benchmarks/throughput.py: tok/s, MFU and step times.

    PYTHONPATH=. python benchmarks/torch_reference.py [--shapes=4/4/128/64/12,...]
        [--steps=40] [--warmup=3] [--text=README.md] [--compile]

gptjax is compared with nanoGPT's CPU recipe (torch on CPU, eager, float32, AdamW),
which this project cannot download, so it times its own PyTorch GPT instead: gptjax's
architecture at the same shapes (benchmarks/shapes.py) on the same byte windows, with
gptjax's optimizer. The model is GPT-2's pre-LayerNorm decoder as gptjax builds it
(biases everywhere, tanh GELU, learned positions, a final LayerNorm, the output layer
tied to the token embedding, no dropout, 256 byte tokens); its parameters carry GPT-2's
checkpoint names and [in, out] layouts, so `gptjax.convert.hf_tensors` of gptjax
parameters is its state dict (tests/test_torch_reference.py loads one into both and
checks logits and training steps agree). The training step is nanoGPT's: eager float32,
`torch.optim.AdamW` with gptjax's betas, epsilon, weight decay on the kernels only,
global-norm clip and learning-rate schedule, on all the cores.

The columns are throughput.py's: MFU divides gptjax's FLOPs-per-token convention by the
same cached CPU peak. Start-up is the wall time from process start to the first step
done: jax is imported only after the first shape's steps, so it is PyTorch's alone.
"""

from __future__ import annotations

import math
import os
import time

import ml_collections
import numpy as np
import shapes
import torch
import torch.nn.functional as F
from absl import app, flags
from shapes import batches
from torch import nn

_COMPILE = flags.DEFINE_bool(
  "compile", False, "torch.compile the model (nanoGPT's default on GPU)."
)


class Dense(nn.Module):
  """x @ weight + bias with weight [in, out]: GPT-2's Conv1D layout, and gptjax's kernels'."""

  def __init__(self, d_in: int, d_out: int, std: float, generator: torch.Generator) -> None:
    super().__init__()
    self.weight = nn.Parameter(torch.empty(d_in, d_out).normal_(0.0, std, generator=generator))
    self.bias = nn.Parameter(torch.zeros(d_out))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], -1)


class Attention(nn.Module):
  def __init__(self, m: ml_collections.ConfigDict, generator: torch.Generator) -> None:
    super().__init__()
    self.n_head = m.n_head
    self.c_attn = Dense(m.d_model, 3 * m.d_model, m.init_std, generator)
    self.c_proj = Dense(m.d_model, m.d_model, residual_std(m), generator)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    batch, length, width = x.shape
    # Columns of c_attn are (q|k|v, head, head_dim), as gptjax's qkv_kernel [d, 3, heads, kv].
    q, k, v = self.c_attn(x).view(batch, length, 3, self.n_head, -1).permute(2, 0, 3, 1, 4)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return self.c_proj(y.transpose(1, 2).reshape(batch, length, width))


class Mlp(nn.Module):
  def __init__(self, m: ml_collections.ConfigDict, generator: torch.Generator) -> None:
    super().__init__()
    self.c_fc = Dense(m.d_model, m.d_ff, m.init_std, generator)
    self.c_proj = Dense(m.d_ff, m.d_model, residual_std(m), generator)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
  def __init__(self, m: ml_collections.ConfigDict, generator: torch.Generator) -> None:
    super().__init__()
    self.ln_1 = nn.LayerNorm(m.d_model, eps=1e-5)
    self.attn = Attention(m, generator)
    self.ln_2 = nn.LayerNorm(m.d_model, eps=1e-5)
    self.mlp = Mlp(m, generator)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = x + self.attn(self.ln_1(x))
    return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
  """gptjax's GPT-2 architecture (model.architecture='gpt2') for one model config group.

  Initialised as gptjax initialises (N(0, init_std), residual projections scaled down,
  zero biases, unit LayerNorms), from torch's own random numbers.
  """

  def __init__(self, m: ml_collections.ConfigDict, seed: int = 0) -> None:
    super().__init__()
    if m.architecture != "gpt2" or m.dropout or m.attn_dropout or m.special_tokens:
      raise ValueError("the reference is gptjax's gpt2 architecture without dropout only")
    if m.pad_vocab_multiple != 1:
      raise ValueError("model.pad_vocab_multiple: the reference has no padded rows")
    generator = torch.Generator().manual_seed(seed)
    self.transformer = nn.ModuleDict(
      {
        "wte": nn.Embedding(m.vocab_size, m.d_model),
        "wpe": nn.Embedding(m.seq_len, m.d_model),
        "h": nn.ModuleList(Block(m, generator) for _ in range(m.n_layer)),
        "ln_f": nn.LayerNorm(m.d_model, eps=1e-5),
      }
    )
    for table in (self.transformer.wte, self.transformer.wpe):
      nn.init.normal_(table.weight, 0.0, m.init_std, generator=generator)

  def forward(self, tokens: torch.Tensor) -> torch.Tensor:
    """float32 logits [batch, length, vocab] of int64 tokens [batch, length]."""
    t = self.transformer
    x = t.wte(tokens) + t.wpe(torch.arange(tokens.shape[1]))
    for block in t.h:
      x = block(x)
    return F.linear(t.ln_f(x), t.wte.weight)  # the output layer is the token embedding


def residual_std(m: ml_collections.ConfigDict) -> float:
  """GPT-2's init of projections into the residual stream (gptjax.model._residual_std)."""
  return m.init_std / (2 * m.n_layer) ** 0.5


def optimizer(model: GPT, optim: ml_collections.ConfigDict) -> torch.optim.AdamW:
  """AdamW as gptjax's optim.make sets it: weight decay on the Dense kernels only (every
  weight matrix to or from the residual stream), never on biases, LayerNorms or, with
  gptjax's default optim.decay_embeddings=False, the embeddings."""
  if optim.decay_embeddings:
    raise ValueError("optim.decay_embeddings: the reference decays the kernels only")
  kernels = [m.weight for m in model.modules() if isinstance(m, Dense)]
  chosen = {id(p) for p in kernels}
  rest = [p for p in model.parameters() if id(p) not in chosen]
  return torch.optim.AdamW(
    [
      {"params": kernels, "weight_decay": optim.weight_decay},
      {"params": rest, "weight_decay": 0.0},
    ],
    lr=optim.lr,
    betas=(optim.b1, optim.b2),
    eps=optim.eps,
  )


def learning_rate(optim: ml_collections.ConfigDict, total_steps: int, step: int) -> float:
  """The learning rate of update `step` (0-based) under gptjax's default schedule: warmup
  to optim.lr at (step + 1) / warmup, then a cosine to lr * min_lr_ratio on the last
  update (gptjax.optim.learning_rate, which the test compares this with)."""
  if optim.schedule != "cosine" or optim.warmup_tokens or optim.decay_tokens:
    raise ValueError("the reference has gptjax's cosine schedule over steps only")
  warmup = min(optim.warmup_steps, total_steps)
  if step < warmup:
    return optim.lr * (step + 1) / warmup
  span = max(total_steps - 1 - warmup, 1)  # updates from the peak to the last one
  progress = min(step - warmup, span) / span
  cosine = 0.5 * (1 + math.cos(math.pi * progress))
  return optim.lr * (optim.min_lr_ratio + (1 - optim.min_lr_ratio) * cosine)


def train_step(
  model: nn.Module, opt: torch.optim.Optimizer, tokens: torch.Tensor, lr: float, clip_norm: float
) -> torch.Tensor:
  """One update on rows [batch, length + 1]; returns the loss before it (the mean
  next-token cross-entropy), as gptjax's train_step does."""
  for group in opt.param_groups:
    group["lr"] = lr
  logits = model(tokens[:, :-1])
  loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
  opt.zero_grad(set_to_none=True)
  loss.backward()
  if clip_norm > 0:
    nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
  opt.step()
  return loss.detach()


def seconds_since_process_start() -> float:
  """Wall seconds since this process started (Linux: /proc), to 1 / CLK_TCK."""
  with open("/proc/self/stat") as f:
    start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
  return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")


def time_shape(shape: str, text: bytes) -> dict[str, float]:
  """Trains the reference at `shape` for --warmup + --steps updates and times the last --steps.

  `first_step_s` is the process's age when the first update finished."""
  c = shapes.run_config(shape, shapes.WARMUP.value + shapes.STEPS.value)
  model = GPT(c.model, seed=c.train.seed)
  opt = optimizer(model, c.optim)
  step_model = torch.compile(model) if _COMPILE.value else model
  feed = [
    torch.from_numpy(b).long()
    for b in batches(text, c.train.batch_size, c.model.seq_len, c.train.steps)
  ]
  times, losses, first_step_s = [], [], 0.0
  for i, tokens in enumerate(feed):
    start = time.perf_counter()
    losses.append(
      train_step(
        step_model, opt, tokens, learning_rate(c.optim, c.train.steps, i), c.optim.clip_norm
      )
    )
    if i == 0:
      first_step_s = seconds_since_process_start()
    if i >= shapes.WARMUP.value:
      times.append(time.perf_counter() - start)
  tokens_per_step = c.train.batch_size * c.model.seq_len
  return {
    "model": c.model,
    "params": sum(p.numel() for p in model.parameters()),
    "tok_s": tokens_per_step * len(times) / sum(times),
    "p50_ms": 1e3 * float(np.percentile(times, 50)),
    "p90_ms": 1e3 * float(np.percentile(times, 90)),
    "loss": float(torch.stack(losses).mean()),
    "first_step_s": first_step_s,
  }


def main(argv: list[str]) -> None:
  del argv
  torch.set_num_threads(os.cpu_count())
  with open(shapes.TEXT.value, "rb") as f:
    text = f.read()
  mode = "compile" if _COMPILE.value else "eager"
  for n, shape in enumerate(shapes.SHAPES.value):
    r = time_shape(shape, text)
    from gptjax import flops  # imports jax: only once the first shape's start-up is timed

    expected = flops.param_counts(r["model"])["n_params"]
    if r["params"] != expected:
      raise AssertionError(f"{shape}: {r['params']:,} parameters, gptjax has {expected:,}")
    peak, peak_note = flops.device_peak(0.0, "float32")
    if n == 0:
      print(
        f"torch {torch.__version__} CPU, {torch.get_num_threads()} threads; MFU peak: {peak_note}; "
        f"start-up (process start to first step done): {r['first_step_s']:.2f} s"
      )
      print(
        f"{'shape (L/H/W/T/B)':<18} {'mode':>8} {'params':>10} {'gptjax':>10} {'tok/s':>9} "
        f"{'MFU':>6} {'p50 ms':>8} {'p90 ms':>8} {'mean loss':>9}"
      )
    mfu = r["tok_s"] * flops.flops_per_token(r["model"]) / (peak * 1e12) if peak else math.nan
    print(
      f"{shape:<18} {mode:>8} {r['params']:>10,} {expected:>10,} {r['tok_s']:>9,.0f} "
      f"{100 * mfu:>5.1f}% {r['p50_ms']:>8.1f} {r['p90_ms']:>8.1f} {r['loss']:>9.4f}",
      flush=True,
    )


if __name__ == "__main__":
  app.run(main)
