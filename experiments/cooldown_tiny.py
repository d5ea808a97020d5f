"""A cooldown sweep small enough for a test: one stable run and 2 branches of 1 layer.

Byte tokenizer, 32-token context, batch 8 (one sequence per test device): budgets of
6 and 12 updates (1,536 and 3,072 tokens), each decaying over its last half. The
stable run holds the peak for 6 updates, checkpointed every 2; the branches start
from its steps 4 and 6.
"""

import importlib.util
import os

from gptjax.scaling import cooldown, sizes


def get_config():
  """scaling_tiny.py's member settings: the same test-sized model and data."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scaling_tiny.py")
  spec = importlib.util.spec_from_file_location("scaling_tiny", path)
  tiny = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tiny)
  return tiny.get_config()


def get_sweep():
  size = sizes.family([1], get_config(), lr_rule="kaplan", tokens_rule="fixed", tokens_value=3072)
  return cooldown.branches(size, get_config(), (0.5, 1.0), every=2, decay_fraction=0.5)
