"""GPT-2 large: 774,030,080 parameters at vocab 50257, context 1024.

Shape, batch arithmetic and training settings: gptjax/scaling/families.py, gpt2().
CPU smoke test: --config.train.steps=3 --config.train.batch_size=2
"""

from gptjax.scaling import families


def get_config():
  return families.gpt2("large")
