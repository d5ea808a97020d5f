"""Fine-tuning over pretrained sizes: GPT-1's recipe (finetune_classify.py) on its
synthetic task, one member per completed run of a pretraining sweep.

  python -m gptjax.sweep --config=experiments/finetune_ladder.py:runs/scaling_tiny \
      --workdir=runs/finetune_ladder
  python -m gptjax.report runs/finetune_ladder

Each member takes its source run's name, model shape and newest checkpoint
(`sizes.finetune_family`); the report sets fine-tuned accuracy against each
source's pretraining compute and final loss. The tokenizer is each source's, so a
byte-level ladder (scaling_tiny, scaling_cpu) fine-tunes on bytes.
"""

import importlib.util
import os

from gptjax.scaling import sizes


def get_config(source: str = ""):
  """finetune_classify.py's recipe; `source` (the pretraining sweep) only matters to get_sweep."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "finetune_classify.py")
  spec = importlib.util.spec_from_file_location("finetune_classify", path)
  recipe = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(recipe)
  return recipe.get_config()


def get_sweep(source: str = ""):
  if not source:
    raise ValueError(
      "name the pretraining sweep: --config=experiments/finetune_ladder.py:SWEEP_DIR"
    )
  return sizes.finetune_family(source)
