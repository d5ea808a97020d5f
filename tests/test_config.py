"""Config files load, and bad configs fail fast with the field, the value and the fix."""

import os
import runpy
import subprocess
import sys

import pytest

from gptjax import config as config_lib
from gptjax import data
from gptjax.scaling import families

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def experiment(name: str, *args):
  return runpy.run_path(os.path.join(ROOT, "experiments", name))["get_config"](*args)


@pytest.mark.parametrize(
  "name", ["quickstart.py", "gpt2_small.py", "gpt2_medium.py", "gpt2_large.py", "gpt2_xl.py"]
)
def test_experiment_files_validate(name):
  config_lib.validate(experiment(name))


@pytest.mark.parametrize("size", list(families.GPT3_SIZES))
def test_gpt3_sizes_follow_the_paper(size):
  c = experiment("gpt3.py", size)
  config_lib.validate(c)
  n_layer, d_model, n_head, batch_size, lr, _ = families.GPT3_SIZES[size]
  paper_batch_tokens = {
    "125m": 0.5e6,
    "350m": 0.5e6,
    "760m": 0.5e6,
    "1.3b": 1e6,
    "2.7b": 1e6,
    "6.7b": 2e6,
    "13b": 2e6,
    "175b": 3.2e6,
  }[size]
  assert (c.model.n_layer, c.model.d_model, c.model.n_head) == (n_layer, d_model, n_head)
  assert c.model.seq_len == 2048 and c.model.d_ff == 4 * d_model
  assert c.train.batch_size == batch_size
  assert abs(batch_size * 2048 - paper_batch_tokens) / paper_batch_tokens < 0.05
  assert c.optim.lr == lr
  assert config_lib.train_steps(c) == -(-300_000_000_000 // (c.train.batch_size * 2048))


def test_gpt3_13b_uses_d_model_5120():
  assert experiment("gpt3.py", "13b").model.d_model == 5120


def _error(mutate) -> str:
  c = config_lib.base_config()
  mutate(c)
  with pytest.raises(ValueError) as e:
    config_lib.validate(c)  # the config's own fields, then the data's, as main checks them
    data.check(c)
  return str(e.value)


@pytest.mark.parametrize(
  "mutate, expected",
  [
    (lambda c: setattr(c.model, "n_head", 5), ["model.d_model=256", "model.n_head=5", "divisors"]),
    (
      lambda c: (setattr(c.train, "batch_size", 10), setattr(c.train, "grad_accum_steps", 4)),
      ["train.batch_size=10", "train.grad_accum_steps=4", "multiple"],
    ),
    (
      lambda c: setattr(c.model, "remat_policy", "full"),
      ["model.remat_policy='full'", "'nothing_saveable'"],
    ),
    (lambda c: setattr(c.train, "steps", -3), ["train.steps=-3", ">= 0"]),
    (lambda c: setattr(c.data, "source", "no_such_dataset"), ["data.source='no_such_dataset'"]),
    (lambda c: setattr(c.model, "architecture", "gpt4"), ["model.architecture='gpt4'", "'gpt1'"]),
    (lambda c: setattr(c.model, "dtype", "float16"), ["model.dtype='float16'", "'bfloat16'"]),
    (
      lambda c: (
        setattr(c.model, "attn_dropout", 0.1),
        setattr(c.model, "attention_impl", "cudnn"),
      ),
      ["model.attn_dropout=0.1", "attention_impl='blocks' or 'xla'"],
    ),
    (
      lambda c: setattr(c.model, "attention_impl", "cudnn"),
      ["model.attention_impl='cudnn' with model.dtype='float32'", "model.dtype='bfloat16'"],
    ),
    (lambda c: setattr(c.mesh.ici, "data", 0), ["mesh.ici", "at most one -1"]),
    (lambda c: setattr(c.optim, "lr", 0.0), ["optim.lr=0.0", "> 0"]),
  ],
)
def test_bad_config_names_field_value_and_fix(mutate, expected):
  message = _error(mutate)
  for fragment in expected:
    assert fragment in message, message


def test_every_error_is_reported_at_once():
  message = _error(lambda c: (setattr(c.model, "n_layer", 0), setattr(c.optim, "lr", -1.0)))
  assert "model.n_layer=0" in message and "optim.lr=-1.0" in message


@pytest.mark.slow
def test_command_line_override_is_validated_before_any_work(tmp_path):
  workdir = tmp_path / "run"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "gptjax.main",
      f"--config={ROOT}/experiments/quickstart.py",
      f"--workdir={workdir}",
      "--config.model.d_model=30",
      "--config.model.n_head=4",
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=300,
  )
  assert result.returncode != 0
  assert "model.d_model=30" in result.stderr and "model.n_head=4" in result.stderr
  assert not workdir.exists()  # nothing was started


def test_override_applies_dotted_fields_to_a_copy():
  """Sweeps, resumes and tests address fields as 'group.field' (any depth); a misspelt
  field is refused by name and the original config is never changed."""
  base = config_lib.base_config()
  c = config_lib.override(base, {"model.n_layer": 7, "mesh.ici.data": 2, "optim.lr": 2.5e-3})
  assert (c.model.n_layer, c.mesh.ici.data, c.optim.lr) == (7, 2, 2.5e-3)
  assert (base.model.n_layer, base.mesh.ici.data) == (4, -1) and base.optim.lr != 2.5e-3
  for bad in ("model.n_layers", "modle.n_layer", "n_layer", "model.n_layer.x"):
    with pytest.raises(KeyError, match=bad.replace(".", r"\.")):
      config_lib.override(base, {bad: 1})


@pytest.mark.slow
def test_prepare_refuses_a_bad_source_in_one_line(tmp_path):
  """`python -m gptjax.prepare` checks the config first: one `error:` line, nothing built."""
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "gptjax.prepare",
      f"--config={ROOT}/experiments/quickstart.py",
      "--config.data.source=no_such_dataset",
      f"--config.data.data_dir={tmp_path}",
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
  )
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[0] == "error: invalid data config:"
  assert "data.source='no_such_dataset'" in result.stderr
  assert os.listdir(tmp_path) == []


def test_token_counts_in_scientific_notation_are_whole_numbers_for_integer_fields():
  argv = [
    "--config=experiments/gpt3.py:125m",
    "--config.train.tokens=3e11",
    "--config.optim.warmup_tokens=3.75E+8",
    "--config.optim.lr=6e-4",  # a float: left as written
    "--config.model.dropout=1.5e0",  # not whole: left as written
    "--workdir=runs/3e11",  # not a --config.* value
  ]
  assert config_lib.whole_numbers(argv) == [
    "--config=experiments/gpt3.py:125m",
    "--config.train.tokens=300000000000",
    "--config.optim.warmup_tokens=375000000",
    "--config.optim.lr=6e-4",
    "--config.model.dropout=1.5e0",
    "--workdir=runs/3e11",
  ]
