"""gptjax: GPT-family language models and scaling experiments in JAX/Flax."""

from gptjax.load import load  # noqa: F401  gptjax.load(workdir, step): a run directory as a model
