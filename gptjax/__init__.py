"""gptjax: GPT-family language models and scaling experiments in JAX/Flax."""

from gptjax.load import load  # gptjax.load(workdir, step): a run directory as a model

__all__ = ["load"]
