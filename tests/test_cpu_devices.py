"""gptjax.cpu_devices: how many XLA:CPU devices a run splits its host into.

That the split trains the same model (losses and parameters equal to one device's within
float tolerance) is tests/test_parallel.py's every-mesh test; here, the count.
"""

import json
import os
import subprocess
import sys

import pytest

from gptjax import config as config_lib
from gptjax import cpu_devices, flops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(batch=16, accum=1, **mesh):
  c = config_lib.base_config()
  c.train.batch_size = batch
  c.train.grad_accum_steps = accum
  c.mesh.ici.update(mesh)
  c.mesh.cpu_devices = 0  # one per core
  return c


@pytest.mark.parametrize(
  "cores, config, expected",
  [
    (2, _config(16), 2),  # one per core
    (2, _config(15), 1),  # 15 sequences do not split in two
    (8, _config(12), 6),  # the most that divide the batch
    (8, _config(16, accum=4), 4),  # micro-batches of 4
    (8, _config(16, data=-1, tensor=2), 8),  # data 4 x tensor 2: the batch splits 4 ways
    (3, _config(16, data=-1, tensor=2), 2),  # a multiple of the fixed axes only
    (1, _config(16, data=-1, tensor=2), 2),  # the fixed axes need 2 whatever the cores
    (8, _config(16, data=2), 2),  # a fixed mesh gets exactly its devices
  ],
)
def test_one_device_per_core_that_the_mesh_and_batch_divide(cores, config, expected):
  assert cpu_devices.choose(config, cores, 2**40) == expected


def test_no_more_state_copies_than_a_quarter_of_the_memory_holds():
  c = _config(16)
  copy = cpu_devices.STATE_BYTES_PER_PARAM * flops.param_counts(c.model)["n_params"]
  assert [cpu_devices.choose(c, 8, memory) for memory in (3 * copy, 4 * copy, 17 * copy)] == [
    1,
    1,
    4,
  ]
  c.mesh.cpu_devices = 8  # a count that is asked for is not second-guessed
  assert cpu_devices.choose(c, 8, copy) == 8


def test_a_set_count_is_taken_as_given_and_a_negative_one_refused():
  c = _config(16)
  c.mesh.cpu_devices = 3
  assert cpu_devices.choose(c, 2, 2**40) == 3
  c.mesh.cpu_devices = -1
  with pytest.raises(ValueError, match=r"mesh.cpu_devices=-1: must be an integer >= 0"):
    config_lib.validate(c)


_PROBE = """
import json, sys
import jax
from gptjax import config as config_lib, cpu_devices
c = config_lib.base_config()
c.train.batch_size = 16
c.mesh.cpu_devices = 0
set_to = cpu_devices.configure(c, distributed=False)
print(json.dumps({"set_to": set_to, "devices": jax.device_count(), "cores": cpu_devices.host_cores()}))
"""


def _probe(xla_flags):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  if xla_flags:
    env["XLA_FLAGS"] = xla_flags
  out = subprocess.run(
    [sys.executable, "-c", _PROBE], cwd=ROOT, env=env, capture_output=True, text=True, check=True
  )
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_run_without_xla_flags_gets_one_device_per_core():
  got = _probe("")
  expected = max(n for n in range(1, got["cores"] + 1) if 16 % n == 0)
  assert got == {"set_to": expected, "devices": expected, "cores": got["cores"]}


@pytest.mark.slow
def test_a_forced_count_in_xla_flags_is_left_alone():
  got = _probe("--xla_force_host_platform_device_count=3")
  assert (got["set_to"], got["devices"]) == (None, 3)
