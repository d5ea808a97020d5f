"""Opening a run directory as a model: `gptjax.load(workdir, step=None)`.

Generation, evaluation, conversion and fine-tuning all start from a trained run,
so they all open it here, the same way: the config the run resolved, its
tokenizer, and the parameters of one checkpoint laid out on a device mesh.

Only the parameters are read from the checkpoint. Adam's two moments are twice
the size of the parameters, so skipping them makes a loaded model need about a
third of the memory its training state did.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import TYPE_CHECKING, Any

import ml_collections
from absl import logging
from etils import epath

from gptjax import rundir
from gptjax.config import base_config

if TYPE_CHECKING:
  from jax.sharding import Mesh

  from gptjax.data.tokenizer import Tokenizer
  from gptjax.model import GPT
  from gptjax.sharding import Rules

# jax, flax, orbax and the data package are imported where they are used: `import gptjax`
# imports this module, and reading a config should not have to load them.


@dataclasses.dataclass(frozen=True)
class Loaded:
  """A run directory opened at one checkpoint."""

  model: GPT
  params: Any  # laid out on `mesh` as the rules say
  tokenizer: Tokenizer
  config: ml_collections.ConfigDict  # the run's config.json over base_config()
  step: int  # the checkpoint the parameters come from
  mesh: Mesh
  axis_rules: Rules

  def active(self):
    """The mesh and rules the model's logical constraints resolve against (a context)."""
    from gptjax import sharding

    return sharding.active(self.mesh, self.axis_rules)


def _merge(base: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
  """`saved` over `base`, group by group: fields a newer gptjax added keep their defaults."""
  merged = dict(base)
  for key, value in saved.items():
    merged[key] = _merge(base[key], value) if isinstance(base.get(key), dict) else value
  return merged


def run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run resolved (WORKDIR/config.json), over today's defaults."""
  path = epath.Path(workdir) / "config.json"
  if not path.is_file():
    raise ValueError(
      f"--workdir={workdir}: no config.json there; point at a run directory "
      "written by python -m gptjax.main"
    )
  return ml_collections.ConfigDict(_merge(base_config().to_dict(), json.loads(path.read_text())))


def _checkpoint_dir(workdir: str) -> str:
  """WORKDIR/checkpoints as orbax takes it: a gs:// URL as it is, a local path made absolute."""
  return os.path.join(
    workdir if rundir.is_remote(workdir) else os.path.abspath(workdir), "checkpoints"
  )


def checkpoint_steps(workdir: str) -> list[int]:
  """The steps with a complete checkpoint in WORKDIR/checkpoints, oldest first."""
  import orbax.checkpoint as ocp

  return sorted(ocp.utils.checkpoint_steps(_checkpoint_dir(workdir)))


def load(
  workdir: str, step: int | None = None, *, mesh: Mesh | None = None, rules: Rules | None = None
) -> Loaded:
  """Model, parameters (only), tokenizer and resolved config of the run in `workdir`.

  `step` picks a checkpoint (default: the newest). The parameters are placed on
  `mesh` with `rules` (default: a mesh built from the run's own mesh settings over
  this machine's devices, and the run's rules), so a model trained with FSDP or
  tensor parallelism loads sharded the same way.
  """
  import flax.linen as nn
  import jax
  import orbax.checkpoint as ocp

  from gptjax import sharding
  from gptjax.data.tokenizer import load_saved
  from gptjax.model import GPT, model_config

  rundir.check(workdir)
  config = run_config(workdir)
  steps = checkpoint_steps(workdir)
  if not steps:
    raise ValueError(
      f"--workdir={workdir}: no checkpoint in {workdir}/checkpoints; train the "
      "run first (python -m gptjax.main) or point at another run directory"
    )
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise ValueError(
      f"--step={step}: no checkpoint at that step in {workdir}/checkpoints; "
      f"it has steps {', '.join(map(str, steps))}"
    )
  axis_rules = sharding.rules(config.mesh) if rules is None else rules
  mesh = sharding.make_mesh(config.mesh) if mesh is None else mesh
  if config.model.attention_impl == "cudnn" and jax.default_backend() != "gpu":
    # A GPU run read elsewhere: 'blocks' computes the same exact causal softmax anywhere.
    logging.info("model.attention_impl: 'cudnn' needs a GPU; using 'blocks' on this backend")
    config.model.attention_impl = "blocks"
  model = GPT(model_config(config.model))

  tokens = jax.ShapeDtypeStruct((1, config.model.seq_len), "int32")
  with sharding.active(mesh, axis_rules):
    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)["params"]
  shardings = sharding.logical_to_sharding(nn.get_partition_spec(boxed), mesh, axis_rules)
  abstract = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.unbox(boxed), shardings
  )
  # The state was saved whole (TrainState: step, params, opt_state, rng); a partial
  # restore of a tree holding only `params` reads those arrays and nothing else.
  item = {"params": abstract}
  with ocp.CheckpointManager(
    _checkpoint_dir(workdir),
    item_names=("state", "meta"),
    options=ocp.CheckpointManagerOptions(create=False),
  ) as mngr:
    restored = mngr.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
          item=item,
          restore_args=ocp.checkpoint_utils.construct_restore_args(item),
          partial_restore=True,
        )
      ),
    )
  tokenizer = load_saved(os.fspath(epath.Path(workdir) / "tokenizer"))
  return Loaded(
    model=model,
    params=restored["state"]["params"],
    tokenizer=tokenizer,
    config=config,
    step=step,
    mesh=mesh,
    axis_rules=axis_rules,
  )
