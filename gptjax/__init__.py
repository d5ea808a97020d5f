"""gptjax: GPT-family language models and scaling experiments in JAX/Flax."""
