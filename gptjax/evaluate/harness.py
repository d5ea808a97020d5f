"""The `gptjax` model of EleutherAI's lm-evaluation-harness (pip install 'gptjax[eval]').

    python -m gptjax.evaluate.harness --model gptjax --model_args workdir=DIR[,step=N] \
        --tasks hellaswag,lambada_openai [any other lm_eval flag]

lm_eval 0.4 finds models only in its own registry, which has no plugin hook, so the
plain `lm_eval` command does not know `gptjax`: this module registers it, then runs
lm_eval's own command line with the arguments given. In Python, importing this module
is enough: `lm_eval.simple_evaluate(model="gptjax", model_args="workdir=DIR", ...)`.

The three request types go through gptjax's own code, so the harness scores exactly
what `python -m gptjax.evaluate` scores:
- `loglikelihood`: scoring.Scorer (joint encoding, whitespace moved to the continuation,
  end-of-text before every context, left truncation);
- `loglikelihood_rolling`: perplexity.rolling_loglikelihood, disjoint windows of
  model.seq_len by default (model arg `stride` for overlapping ones);
- `generate_until`: generate.Decoder, greedy unless the request asks to sample (then its
  temperature; top_k and top_p if given), ending at end-of-text, at any `until` string
  (cut before it) or after `max_gen_toks` tokens; the prompt keeps its last
  model.seq_len - max_gen_toks tokens.
Model arg `start_with_eos` (default true) begins every context and prompt with
end-of-text, as gptjax's training documents do; `start_with_eos=false` gives it only to
an empty one, as lm-eval's HF models do for GPT-2: its published figures need that.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import normalize_gen_kwargs

from gptjax.evaluate import perplexity
from gptjax.evaluate.scoring import Scorer
from gptjax.generate import Decoder, Settings
from gptjax.load import load

DEFAULT_MAX_GEN_TOKS = 256  # lm_eval's default when a task does not say

# lm_eval fills its registry on first use only while the registry is empty, so its own
# models must be registered before gptjax joins them, or `--model hf` would vanish.
importlib.import_module("lm_eval.models")


@register_model("gptjax")
class GptjaxLM(LM):
  """A gptjax run directory as an lm_eval model (model_args: workdir, step, stride,
  start_with_eos, batch_size)."""

  def __init__(
    self,
    workdir: str,
    step: int | str | None = None,
    batch_size: int | str = 16,
    stride: int | str | None = None,
    start_with_eos: bool | str = True,
    max_batch_size: Any = None,
    device: Any = None,
  ):
    del max_batch_size, device  # lm_eval passes them to every model; jax places the arrays
    super().__init__()
    self.run = load(workdir, None if step in (None, "") else int(step))
    batch = 16 if str(batch_size).startswith("auto") else int(batch_size)
    self.start_with_eos = str(start_with_eos).lower() not in ("false", "0", "no")
    self.scorer = Scorer(
      self.run.model, self.run.params, self.run.tokenizer, batch, start_with_eos=self.start_with_eos
    )
    self.stride = int(stride) if stride else self.run.config.model.seq_len
    perplexity.check_stride(self.stride, self.run.config.model.seq_len)
    self.decoder = Decoder(self.run.model, self.run.params, self.run.tokenizer)
    self.batch_size = batch

  def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
    with self.run.active():
      scores = self.scorer.loglikelihood([r.args for r in requests])
    return [(s.logprob, s.is_greedy) for s in scores]

  def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
    with self.run.active():
      return perplexity.rolling_loglikelihood(
        self.scorer, [r.args[0] for r in requests], self.stride
      )

  def generate_until(self, requests: list[Any]) -> list[str]:
    """Requests with the same settings and stop strings are decoded as one batch."""
    groups: dict[tuple[Settings, tuple[str, ...]], list[int]] = {}
    for i, request in enumerate(requests):
      groups.setdefault(self._settings(request.args[1]), []).append(i)
    seq_len = self.run.config.model.seq_len
    out: list[str] = [""] * len(requests)
    for (settings, until), indices in groups.items():
      room = seq_len - settings.max_new_tokens
      if room < 1:
        raise ValueError(
          f"max_gen_toks={settings.max_new_tokens}: must be below the model's "
          f"context (model.seq_len={seq_len})"
        )
      prompts = [self._prompt(requests[i].args[0])[-room:] for i in indices]
      with self.run.active():
        completions = self.decoder.generate(
          prompts, settings, stop=until, batch_size=self.batch_size
        )
      for i, [completion] in zip(indices, completions):
        out[i] = completion.text
    return out

  def _prompt(self, context: str) -> list[int]:
    ids = self.run.tokenizer.encode(context)
    return [self.run.tokenizer.eos_id] + ids if self.start_with_eos or not ids else ids

  @staticmethod
  def _settings(gen_kwargs: dict[str, Any]) -> tuple[Settings, tuple[str, ...]]:
    kwargs = normalize_gen_kwargs(gen_kwargs, DEFAULT_MAX_GEN_TOKS)
    until = tuple(s for s in kwargs["until"] if s)
    # lm_eval leaves the temperature out when do_sample is set without one; transformers'
    # generate (lm_eval's HF model) then samples at its default temperature, 1.
    temperature = float(kwargs.get("temperature", 1.0))
    if not kwargs["do_sample"] or temperature == 0:
      return Settings(max_new_tokens=kwargs["max_gen_toks"]), until
    return Settings(
      strategy="sample",
      temperature=temperature,
      top_k=int(kwargs.get("top_k") or 0),
      top_p=float(kwargs.get("top_p") or 1.0),
      max_new_tokens=kwargs["max_gen_toks"],
      seed=int(kwargs.get("seed") or 0),
    ), until


def main() -> None:
  """lm_eval's command line, with `gptjax` among its models."""
  from lm_eval.__main__ import cli_evaluate

  sys.argv[0] = "lm_eval"
  cli_evaluate()


if __name__ == "__main__":
  main()
