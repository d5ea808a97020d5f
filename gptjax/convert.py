"""Hugging Face GPT-2 (and GPT-1) checkpoints in and out of gptjax run directories.

  python -m gptjax.convert from-hf --hf_dir=DIR --workdir=OUT [--step=0]
  python -m gptjax.convert to-hf --workdir=DIR [--step=N] --hf_dir=OUT [--dtype=bfloat16]

gptjax's pre-LN block computes what `GPT2LMHeadModel` computes (and its post-LN
block what `OpenAIGPTLMHeadModel` does), and HF's Conv1D stores weights [in, out]
as gptjax's einsum kernels do, so every tensor maps to one parameter by a reshape
alone: the fused qkv [d, 3d] is [d, 3, heads, head_dim], the attention output
[d, d] is [heads, head_dim, d]. Only settings under which that mapping is exact
are accepted; anything else is refused by name rather than converted approximately.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import ml_collections
import numpy as np
from etils import epath

from gptjax.config import base_config, padded_vocab_size, validate

# HF model_type -> gptjax architecture, and the names each one gives the embeddings.
ARCHITECTURES = {"gpt2": "gpt2", "openai-gpt": "gpt1"}
_EMBEDDINGS = {"gpt2": ("wte", "wpe"), "gpt1": ("tokens_embed", "positions_embed")}
_HF_CLASSES = {"gpt2": "GPT2LMHeadModel", "gpt1": "OpenAIGPTLMHeadModel"}
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")  # what jax.nn.gelu(approximate=True) computes
_IGNORED = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of older checkpoints
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"


def _layer_tensors(m: ml_collections.ConfigDict) -> list[tuple[tuple[str, ...], str, tuple, tuple]]:
  """(gptjax path in a block, HF name in h.{i}, gptjax shape, HF shape) of every block tensor."""
  d, f, h = m.d_model, m.d_ff, m.n_head
  return [
    (("ln_1", "scale"), "ln_1.weight", (d,), (d,)),
    (("ln_1", "bias"), "ln_1.bias", (d,), (d,)),
    (("attn", "qkv_kernel"), "attn.c_attn.weight", (d, 3, h, d // h), (d, 3 * d)),
    (("attn", "qkv_bias"), "attn.c_attn.bias", (3, h, d // h), (3 * d,)),
    (("attn", "out_kernel"), "attn.c_proj.weight", (h, d // h, d), (d, d)),
    (("attn", "out_bias"), "attn.c_proj.bias", (d,), (d,)),
    (("ln_2", "scale"), "ln_2.weight", (d,), (d,)),
    (("ln_2", "bias"), "ln_2.bias", (d,), (d,)),
    (("mlp", "fc_kernel"), "mlp.c_fc.weight", (d, f), (d, f)),
    (("mlp", "fc_bias"), "mlp.c_fc.bias", (f,), (f,)),
    (("mlp", "proj_kernel"), "mlp.c_proj.weight", (f, d), (f, d)),
    (("mlp", "proj_bias"), "mlp.c_proj.bias", (d,), (d,)),
  ]


def model_from_hf_config(hf: dict[str, Any]) -> dict[str, Any]:
  """gptjax `model.*` fields of an HF GPT-2 / GPT-1 config.json; ValueError if not exact."""
  model_type = hf.get("model_type")
  if model_type not in ARCHITECTURES:
    raise ValueError(
      f"config.json: model_type={model_type!r} is not supported; gptjax imports "
      f"{' and '.join(map(repr, ARCHITECTURES))}"
    )
  architecture = ARCHITECTURES[model_type]
  d = hf["n_embd"]
  problems = []
  if hf.get("layer_norm_epsilon", 1e-5) != 1e-5:
    problems.append(f"layer_norm_epsilon={hf['layer_norm_epsilon']} (gptjax uses 1e-5)")
  if not hf.get("tie_word_embeddings", True):
    problems.append("tie_word_embeddings=false (gptjax ties the output layer to wte)")
  if architecture == "gpt2":
    if hf.get("activation_function", "gelu_new") not in _TANH_GELUS:
      problems.append(
        f"activation_function={hf['activation_function']!r} (gptjax uses the "
        f"tanh GELU: {' or '.join(_TANH_GELUS)})"
      )
    for key, value in (
      ("scale_attn_weights", True),
      ("scale_attn_by_inverse_layer_idx", False),
      ("add_cross_attention", False),
    ):
      if hf.get(key, value) != value:
        problems.append(f"{key}={hf[key]!r} (gptjax computes it as {value!r})")
    d_ff = hf.get("n_inner") or 4 * d
  else:
    if hf.get("afn", "gelu") != "gelu":  # openai-gpt's 'gelu' is the tanh GELU (gelu_new)
      problems.append(f"afn={hf['afn']!r} (gptjax's gpt1 block uses 'gelu', the tanh GELU)")
    d_ff = 4 * d
  if problems:
    raise ValueError(
      f"config.json: this {model_type} differs from what gptjax computes: "
      + "; ".join(problems)
      + "; such a model cannot be converted exactly"
    )
  return dict(
    architecture=architecture,
    n_layer=hf["n_layer"],
    d_model=d,
    n_head=hf["n_head"],
    d_ff=d_ff,
    vocab_size=hf["vocab_size"],
    seq_len=hf.get("n_positions", hf.get("n_ctx")),
    init_std=hf.get("initializer_range", 0.02),
  )


def hf_config(m: ml_collections.ConfigDict, eos_id: int | None) -> dict[str, Any]:
  """The HF config.json of a gptjax model config (the inverse of model_from_hf_config)."""
  common = dict(
    n_layer=m.n_layer,
    n_embd=m.d_model,
    n_head=m.n_head,
    vocab_size=m.vocab_size,
    n_positions=m.seq_len,
    layer_norm_epsilon=1e-5,
    initializer_range=m.init_std,
    tie_word_embeddings=True,
  )
  if m.architecture == "gpt1":
    if m.d_ff != 4 * m.d_model:
      raise ValueError(
        f"model.d_ff={m.d_ff}: openai-gpt has no setting for it (its MLP is "
        f"4 * n_embd = {4 * m.d_model}); this gpt1 model cannot be exported"
      )
    return dict(model_type="openai-gpt", architectures=[_HF_CLASSES["gpt1"]], afn="gelu", **common)
  return dict(
    model_type="gpt2",
    architectures=[_HF_CLASSES["gpt2"]],
    activation_function="gelu_new",
    n_inner=m.d_ff,
    bos_token_id=eos_id,
    eos_token_id=eos_id,
    scale_attn_weights=True,
    scale_attn_by_inverse_layer_idx=False,
    reorder_and_upcast_attn=False,
    **common,
  )


def read_tensors(hf_dir: str) -> dict[str, np.ndarray]:
  """All tensors of model.safetensors (or its sharded index), keyed without `transformer.`.

  The causal-mask buffers (attn.bias, attn.masked_bias) of older checkpoints are dropped.
  """
  from safetensors.numpy import load_file

  root = epath.Path(hf_dir)
  if (root / SAFETENSORS_INDEX).is_file():
    files = sorted(set(json.loads((root / SAFETENSORS_INDEX).read_text())["weight_map"].values()))
  elif (root / SAFETENSORS).is_file():
    files = [SAFETENSORS]
  else:
    raise ValueError(
      f"--hf_dir={hf_dir}: no {SAFETENSORS} or {SAFETENSORS_INDEX}; gptjax reads "
      "safetensors only (re-save a .bin checkpoint with save_pretrained)"
    )
  tensors = {}
  for name in files:
    for key, value in load_file(os.fspath(root / name)).items():
      key = key.removeprefix("transformer.")
      if not key.endswith(_IGNORED):
        tensors[key] = value
  return tensors


def _take(tensors: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
  if name not in tensors:
    raise ValueError(f"tensor {name!r} is missing from the checkpoint")
  found = tensors.pop(name)
  if found.shape != shape:
    raise ValueError(
      f"tensor {name!r}: expected shape {shape} from config.json, found {found.shape}"
    )
  return found


def params_from_hf(tensors: dict[str, np.ndarray], m: ml_collections.ConfigDict) -> dict[str, Any]:
  """gptjax parameters (float32 NumPy, the layout m.scan_layers asks for) from HF tensors.

  The embedding table is padded to model.pad_vocab_multiple with zero rows; the model
  never emits their logits (it crops to vocab_size). Every tensor must be used.
  """
  tensors = dict(tensors)
  wte_name, wpe_name = _EMBEDDINGS[m.architecture]
  wte = _take(tensors, f"{wte_name}.weight", (m.vocab_size, m.d_model))
  lm_head = tensors.pop("lm_head.weight", None)
  if lm_head is not None and not np.array_equal(lm_head, wte):
    raise ValueError(
      f"tensor 'lm_head.weight' differs from '{wte_name}.weight': gptjax ties "
      "the output layer to the embedding and cannot import an untied head"
    )
  params: dict[str, Any] = {
    "wte": np.zeros((padded_vocab_size(m), m.d_model), np.float32),
    "wpe": _take(tensors, f"{wpe_name}.weight", (m.seq_len, m.d_model)).astype(np.float32),
  }
  params["wte"][: m.vocab_size] = wte
  layers = []
  for i in range(m.n_layer):
    block: dict[str, dict[str, np.ndarray]] = {}
    for (module, name), hf_name, shape, hf_shape in _layer_tensors(m):
      block.setdefault(module, {})[name] = (
        _take(tensors, f"h.{i}.{hf_name}", hf_shape).reshape(shape).astype(np.float32)
      )
    layers.append(block)
  if m.architecture == "gpt2":
    params["ln_f"] = {
      "scale": _take(tensors, "ln_f.weight", (m.d_model,)).astype(np.float32),
      "bias": _take(tensors, "ln_f.bias", (m.d_model,)).astype(np.float32),
    }
  if tensors:
    raise ValueError(
      f"tensors {sorted(tensors)} are not part of a {m.n_layer}-layer "
      f"{m.architecture} model; check config.json against the checkpoint"
    )
  if m.scan_layers:
    params["blocks"] = {
      module: {name: np.stack([b[module][name] for b in layers]) for name in layers[0][module]}
      for module in layers[0]
    }
  else:
    params.update({f"block_{i}": block for i, block in enumerate(layers)})
  return params


def hf_tensors(params: dict[str, Any], m: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """HF tensors (`transformer.` names) of gptjax parameters: the inverse of params_from_hf.

  The tied output layer is stored once (as the embedding) and padded rows are cropped.
  """
  wte_name, wpe_name = _EMBEDDINGS[m.architecture]
  out = {
    f"{wte_name}.weight": np.asarray(params["wte"])[: m.vocab_size],
    f"{wpe_name}.weight": np.asarray(params["wpe"]),
  }
  for i in range(m.n_layer):
    for (module, name), hf_name, _, hf_shape in _layer_tensors(m):
      value = (
        params["blocks"][module][name][i] if m.scan_layers else params[f"block_{i}"][module][name]
      )
      out[f"h.{i}.{hf_name}"] = np.asarray(value).reshape(hf_shape)
  if m.architecture == "gpt2":
    out["ln_f.weight"] = np.asarray(params["ln_f"]["scale"])
    out["ln_f.bias"] = np.asarray(params["ln_f"]["bias"])
  return {f"transformer.{k}": np.ascontiguousarray(v) for k, v in out.items()}


def run_config_from_hf(
  hf_dir: str, workdir: str, overrides: dict[str, Any] | None = None
) -> ml_collections.ConfigDict:
  """The gptjax config of an HF directory: its model shape, the tokenizer saved with the run."""
  config_file = epath.Path(hf_dir) / "config.json"
  if not config_file.is_file():
    raise ValueError(
      f"--hf_dir={hf_dir}: no config.json there; point at a directory written "
      "by save_pretrained (or downloaded from the Hub)"
    )
  config = base_config()
  config.model.update(model_from_hf_config(json.loads(config_file.read_text())))
  config.model.update(overrides or {})
  config.data.tokenizer = "hf:" + os.path.join(os.path.abspath(workdir), "tokenizer")
  checked = config.copy_and_resolve_references()  # the tokenizer is only saved after the checks
  checked.data.tokenizer = "bytes"
  validate(checked)
  return config


def import_hf(
  hf_dir: str, workdir: str, step: int = 0, overrides: dict[str, Any] | None = None
) -> ml_collections.ConfigDict:
  """Writes a gptjax run directory (config.json, tokenizer, one checkpoint) from `hf_dir`.

  Everything is read and checked before anything is written, and an existing run is
  never overwritten.
  """
  from gptjax import checkpoint, metrics
  from gptjax.data.tokenizer import HFTokenizer

  if any((epath.Path(workdir) / name).exists() for name in ("config.json", "checkpoints")):
    raise ValueError(f"--workdir={workdir}: already holds a run; convert into a new directory")
  config = run_config_from_hf(hf_dir, workdir, overrides)
  params = params_from_hf(read_tensors(hf_dir), config.model)
  _check_layout(params, config)
  tokenizer = HFTokenizer.from_path(hf_dir)
  if tokenizer.vocab_size > config.model.vocab_size:
    raise ValueError(
      f"--hf_dir={hf_dir}: the tokenizer has {tokenizer.vocab_size} ids but the "
      f"model only {config.model.vocab_size} embedding rows"
    )
  tokenizer.save(os.path.join(workdir, "tokenizer"))
  metrics.write_json(epath.Path(workdir) / "config.json", json.loads(config.to_json_best_effort()))
  mngr = checkpoint.manager(workdir, config)
  checkpoint.save(mngr, step, {"params": params}, config, {"converted_from": hf_dir})
  checkpoint.wait(mngr)
  mngr.close()
  return config


def _check_layout(params: dict[str, Any], config: ml_collections.ConfigDict) -> None:
  """The converted tree must be exactly the one gptjax.model.GPT initialises."""
  import flax.linen as nn
  import jax

  from gptjax.model import GPT, model_config

  tokens = jax.ShapeDtypeStruct((1, config.model.seq_len), "int32")
  expected = nn.unbox(
    jax.eval_shape(GPT(model_config(config.model)).init, jax.random.PRNGKey(0), tokens)["params"]
  )
  shapes = lambda tree: jax.tree.map(lambda a: tuple(a.shape), tree)
  if shapes(params) != shapes(expected):
    raise AssertionError(
      f"converted parameters {shapes(params)} do not match the model's {shapes(expected)}"
    )


def export_hf(
  workdir: str, hf_dir: str, step: int | None = None, dtype: str = "float32"
) -> list[str]:
  """Writes `hf_dir` for transformers.AutoModelForCausalLM; returns notes for the user."""
  import jax
  import ml_dtypes
  from safetensors.numpy import save_file

  from gptjax.data.tokenizer import HFTokenizer, SentencePieceTokenizer
  from gptjax.load import load

  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"--dtype={dtype}: use float32 or bfloat16")
  loaded = load(workdir, step)
  m = loaded.config.model
  eos_id = loaded.tokenizer.eos_id
  config = hf_config(m, eos_id)
  np_dtype = np.float32 if dtype == "float32" else ml_dtypes.bfloat16
  tensors = {k: v.astype(np_dtype) for k, v in hf_tensors(jax.device_get(loaded.params), m).items()}
  out = epath.Path(hf_dir)
  out.mkdir(parents=True, exist_ok=True)
  save_file(tensors, os.fspath(out / SAFETENSORS), metadata={"format": "pt"})
  (out / "config.json").write_text(json.dumps({**config, "dtype": dtype}, indent=2))
  (out / "generation_config.json").write_text(
    json.dumps(
      {"bos_token_id": eos_id, "eos_token_id": eos_id} if m.architecture == "gpt2" else {}, indent=2
    )
  )
  notes = [f"wrote {hf_dir}: {_HF_CLASSES[m.architecture]}, step {loaded.step}, {dtype}"]
  if m.special_tokens:
    notes.append(
      f"left out: the {m.special_tokens} fine-tuning special tokens (ids {m.vocab_size}.."
      f"{m.vocab_size + m.special_tokens - 1}), which the exported vocabulary has no place "
      "for, and any task head; the export is the language model alone"
    )
  if isinstance(loaded.tokenizer, HFTokenizer):
    loaded.tokenizer.save(hf_dir)
    (out / "tokenizer_config.json").write_text(
      json.dumps(
        {
          "tokenizer_class": "PreTrainedTokenizerFast",
          "model_max_length": m.seq_len,
          "bos_token": "<|endoftext|>",
          "eos_token": "<|endoftext|>",
          # As gptjax trained: the string "<|endoftext|>" inside a text is text.
          "split_special_tokens": True,
        },
        indent=2,
      )
    )
  elif isinstance(loaded.tokenizer, SentencePieceTokenizer):
    loaded.tokenizer.save(hf_dir)
    notes.append(
      f"the tokenizer is SentencePiece: {hf_dir}/spm.model; load it with "
      f"sentencepiece.SentencePieceProcessor(model_file='{hf_dir}/spm.model') "
      f"(end of text is id {eos_id}; encode without BOS)"
    )
  else:
    notes.append(
      f"the tokenizer is UTF-8 bytes: ids 0..255 are bytes, {eos_id} is end of text; "
      "no tokenizer file is written"
    )
  return notes


def main(argv: list[str]) -> None:
  from absl import flags, logging

  args = flags.FLAGS
  if not args["verbosity"].present:  # orbax logs every save and restore at INFO
    logging.set_verbosity(logging.WARNING)
  if len(argv) != 2 or argv[1] not in ("from-hf", "to-hf"):
    sys.exit(
      "error: give one command, from-hf or to-hf, e.g. python -m gptjax.convert from-hf "
      "--hf_dir=DIR --workdir=OUT"
    )
  try:
    if argv[1] == "from-hf":
      step = 0 if args.step is None else args.step
      config = import_hf(
        args.hf_dir,
        args.workdir,
        step,
        dict(scan_layers=args.scan_layers, pad_vocab_multiple=args.pad_vocab_multiple),
      )
      m = config.model
      print(
        f"wrote {args.workdir}: {m.architecture}, {m.n_layer} layers, d_model {m.d_model}, "
        f"vocab {m.vocab_size}, context {m.seq_len}, checkpoint step {step}"
      )
    else:
      for note in export_hf(args.workdir, args.hf_dir, args.step, args.dtype):
        print(note)
  except ValueError as e:
    sys.exit(f"error: {e}")


def define_flags() -> None:
  from absl import flags

  flags.DEFINE_string(
    "hf_dir",
    None,
    "Hugging Face model directory (read by from-hf, written by to-hf).",
    required=True,
  )
  flags.DEFINE_string(
    "workdir", None, "gptjax run directory (written by from-hf, read by to-hf).", required=True
  )
  flags.DEFINE_integer(
    "step",
    None,
    "from-hf: the checkpoint step to write (default 0); "
    "to-hf: the checkpoint to export (default the newest).",
  )
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "to-hf: tensor dtype.")
  flags.DEFINE_bool(
    "scan_layers", True, "from-hf: store the blocks stacked for nn.scan (model.scan_layers)."
  )
  flags.DEFINE_integer(
    "pad_vocab_multiple", 1, "from-hf: model.pad_vocab_multiple (128 helps accelerators)."
  )


if __name__ == "__main__":
  from absl import app

  define_flags()
  app.run(main)
