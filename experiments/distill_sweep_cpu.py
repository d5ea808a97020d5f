"""Distilled vs from-scratch students on a 2-core CPU, at equal tokens.

Students (n_layer, d_model) = (1, 64), (2, 64), (2, 128): 50K, 100K and 397K
non-embedding parameters, each trained three ways on the same 3M tokens: from
scratch (members 'l1-d64', ...: exactly experiments/scaling_cpu.py's members, same
seed), and distilled from each of two teachers, scaling_cpu's two largest members
(members 'l1-d64-from-l4-d256', ...): l4-d256 (3.16M) and l3-d192 (1.33M). Train the
teachers first:

  python -m gptjax.sweep --config=experiments/scaling_cpu.py --workdir=runs/scaling_cpu
  python -m gptjax.sweep --config=experiments/distill_sweep_cpu.py:runs/scaling_cpu \
      --workdir=runs/distill_sweep_cpu

(The argument is the teachers' sweep directory, relative to where the sweep runs.)
Every member has scaling_cpu's settings, read from that file (bytes, seq_len 256, batch 16, Kaplan's LR(N)), so students
and teachers share the tokenizer; distill.alpha = 0.5 and T = 1 (the defaults'
alpha; T = 1 is what works for language models, Busbridge et al. 2025). The
students' eval loss is the cross-entropy on the true validation data, the same
fixed eval set as the teachers', so teacher and students read off one axis.

Time: the students' own training is 1.5e12 + 2.7e12 + 8.8e12 FLOP per way (x3);
each distilled member adds its teacher's forward pass on 3M tokens, 2.1e13 FLOP
for l4-d256 and 9.0e12 for l3-d192, so 1.3e14 FLOP in all: about an hour at
these models' 4e10 FLOP/s on this CPU. Run with --parallel=1.
"""

import importlib.util
import os

from gptjax.scaling import sizes

STUDENTS = [(1, 64), (2, 64), (2, 128)]  # N = 50K, 100K, 397K
TEACHERS = ["l4-d256", "l3-d192"]  # members of experiments/scaling_cpu.py, trained on 3M tokens


def _scaling_cpu():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scaling_cpu.py")
  spec = importlib.util.spec_from_file_location("scaling_cpu", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(teacher_sweep: str = "runs/scaling_cpu"):
  """scaling_cpu's settings (the teachers' data, tokenizer, batch and warmup) plus distill's."""
  c = _scaling_cpu().get_config()
  c.distill.temperature = 1.0  # T
  c.distill.alpha = 0.5  # half KL to the teacher, half cross-entropy on the data
  return c


def get_sweep(teacher_sweep: str = "runs/scaling_cpu"):
  scratch = sizes.ladder(
    STUDENTS, get_config(), lr_rule="kaplan", tokens_rule="fixed", tokens_value=3e6
  )
  distilled = {
    f"{name}-from-{teacher}": {
      **overrides,
      "train.objective": "distill",
      "distill.teacher": f"run:{teacher_sweep}/{teacher}",
    }
    for teacher in TEACHERS
    for name, overrides in scratch.items()
  }
  return {**scratch, **distilled}
