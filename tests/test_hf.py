"""Hugging Face interop: tokenizers, checkpoint import/export and train.init_from.

The tiny GPT-2 here is written by the test itself (NumPy tensors with HF's names,
saved with safetensors; no network, no torch), and the reference it is checked
against is an independent NumPy GPT-2 forward over those HF tensors. The tests
against transformers itself skip when torch or transformers is missing.
"""

import importlib.util
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest
import tokenizers
from jax.sharding import NamedSharding, PartitionSpec
from safetensors.numpy import load_file, save_file
from test_train import tiny_config

import gptjax
from gptjax import checkpoint, convert, init_from, sharding, train
from gptjax import config as config_lib
from gptjax.data import HFTokenizer, bpe_training
from gptjax.data import validate as data_validate
from gptjax.data.tokenizer import ByteTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_LAYER, D, N_HEAD, VOCAB, CTX = 2, 64, 4, 300, 32
TEXT = (
  "The quick brown fox jumps over the lazy dog. Ünïcödé text, ☃ and 日本語 too.\n"
  "def f(x):\n    return x  # indented code\n"
) * 20
UNSEEN = "naïve café 🙂 — zebra\tquartz\n\n  spaces  and 123 digits <|endoftext|> after"


def _byte_level_bpe(texts, vocab_size):
  """A byte-level BPE trained with `tokenizers` directly, independent of gptjax's trainer."""
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  tok.train_from_iterator(
    texts,
    tokenizers.trainers.BpeTrainer(
      vocab_size=vocab_size - 1,
      show_progress=False,
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    ),
  )
  tok.add_special_tokens(["<|endoftext|>"])
  return tok


def _random_gpt2(rng, n_layer=N_LAYER, d=D, vocab=VOCAB, ctx=CTX, d_ff=4 * D):
  """HF GPT-2 tensors (Conv1D [in, out]) including the attn.bias mask buffers."""
  normal = lambda *shape, std=0.08: (rng.standard_normal(shape) * std).astype(np.float32)
  w = {
    "transformer.wte.weight": normal(vocab, d, std=0.3),
    "transformer.wpe.weight": normal(ctx, d, std=0.1),
    "transformer.ln_f.weight": 1 + normal(d),
    "transformer.ln_f.bias": normal(d),
  }
  for i in range(n_layer):
    p = f"transformer.h.{i}."
    w.update(
      {
        p + "ln_1.weight": 1 + normal(d),
        p + "ln_1.bias": normal(d),
        p + "attn.c_attn.weight": normal(d, 3 * d, std=0.15),
        p + "attn.c_attn.bias": normal(3 * d),
        p + "attn.c_proj.weight": normal(d, d),
        p + "attn.c_proj.bias": normal(d),
        p + "ln_2.weight": 1 + normal(d),
        p + "ln_2.bias": normal(d),
        p + "mlp.c_fc.weight": normal(d, d_ff),
        p + "mlp.c_fc.bias": normal(d_ff),
        p + "mlp.c_proj.weight": normal(d_ff, d),
        p + "mlp.c_proj.bias": normal(d),
        p + "attn.bias": np.tril(np.ones((ctx, ctx), np.float32))[None, None],
      }
    )
  return w


def _hf_config(**overrides):
  return {
    "model_type": "gpt2",
    "architectures": ["GPT2LMHeadModel"],
    "n_layer": N_LAYER,
    "n_embd": D,
    "n_head": N_HEAD,
    "vocab_size": VOCAB,
    "n_positions": CTX,
    "n_inner": None,
    "activation_function": "gelu_new",
    "layer_norm_epsilon": 1e-5,
    "initializer_range": 0.02,
    "bos_token_id": VOCAB - 1,
    "eos_token_id": VOCAB - 1,
    **overrides,
  }


def _write_hf(directory, tensors, config, tokenizer):
  os.makedirs(directory, exist_ok=True)
  save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config, f)
  tokenizer.save(os.path.join(directory, "tokenizer.json"))
  return str(directory)


@pytest.fixture(scope="module")
def hf_tokenizer():
  return _byte_level_bpe([TEXT], VOCAB)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, hf_tokenizer):
  tensors = _random_gpt2(np.random.default_rng(0))
  return _write_hf(tmp_path_factory.mktemp("hf_gpt2"), tensors, _hf_config(), hf_tokenizer)


@pytest.fixture(scope="module")
def imported(tmp_path_factory, hf_dir):
  workdir = str(tmp_path_factory.mktemp("imported") / "run")
  convert.import_hf(hf_dir, workdir, step=0)
  return workdir


def _layer_norm(x, g, b):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-5) * g + b


def _gelu_new(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def numpy_gpt2(w, ids, n_layer=N_LAYER, n_head=N_HEAD):
  """GPT2LMHeadModel's forward in float64 NumPy, written against HF's tensor names."""
  w = {k.removeprefix("transformer."): v.astype(np.float64) for k, v in w.items()}
  t = ids.shape[1]
  x = w["wte.weight"][ids] + w["wpe.weight"][:t]
  causal = np.tril(np.ones((t, t), bool))
  for i in range(n_layer):
    p = f"h.{i}."
    h = _layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
    q, k, v = np.split(h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"], 3, axis=-1)
    heads = lambda a: a.reshape(a.shape[0], t, n_head, -1).transpose(0, 2, 1, 3)
    q, k, v = heads(q), heads(k), heads(v)
    scores = np.where(causal, q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1]), -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    attn = (probs @ v).transpose(0, 2, 1, 3).reshape(x.shape)
    x = x + attn @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
    h = _layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
    h = _gelu_new(h @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
    x = x + h @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
  x = _layer_norm(x, w["ln_f.weight"], w["ln_f.bias"])
  return x @ w["wte.weight"].T


def _logits(loaded, ids):
  return np.asarray(loaded.model.apply({"params": loaded.params}, ids)[0])


IDS = np.random.default_rng(1).integers(0, VOCAB, (2, CTX))


# ------------------------------------------------------------------ tokenizer


def test_byte_level_bpe_matches_tokenizers_and_round_trips(tmp_path):
  """gptjax's 'bpe' trainer and 'hf:' loader give `tokenizers`' ids, and exact text back."""
  json_text = bpe_training.train([TEXT], VOCAB)
  (tmp_path / "tokenizer.json").write_text(json_text)
  reference = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
  ours = HFTokenizer.from_path(str(tmp_path))
  assert ours.vocab_size == VOCAB and ours.eos_id == VOCAB - 1
  assert reference.token_to_id("<|endoftext|>") == ours.eos_id
  reference.encode_special_tokens = True  # text is text, as tiktoken's encode_ordinary
  for text in (TEXT, UNSEEN, "", "a document that mentions <|endoftext|> in its text"):
    ids = ours.encode(text)
    assert ids == reference.encode(text, add_special_tokens=False).ids
    assert ours.eos_id not in ids  # only the pipeline puts end-of-text between documents
    assert ours.decode(ids) == text
    assert ours.token_byte_lengths()[ids].sum() == len(text.encode("utf-8"))
  assert ours.decode([ours.eos_id]) == ""  # EOS itself is dropped, as elsewhere
  assert ours.encode_batch([TEXT, UNSEEN]) == [ours.encode(TEXT), ours.encode(UNSEEN)]
  # GPT-2's older vocab.json + merges.txt pair is the same tokenizer.
  (tmp_path / "pair").mkdir()
  reference.model.save(str(tmp_path / "pair"))
  from_pair = HFTokenizer.from_path(str(tmp_path / "pair"))
  assert from_pair.encode(UNSEEN) == ours.encode(UNSEEN) and from_pair.eos_id == ours.eos_id


def test_bpe_option_trains_once_then_reuses_the_cached_model():
  """data.tokenizer='bpe': trained on the first use, read back from the cache after."""
  first = bpe_training.load_or_train("test-corpus", iter([TEXT]), VOCAB, 10_000)
  again = bpe_training.load_or_train("test-corpus", iter(["never read"]), VOCAB, 10_000)
  assert again.fingerprint() == first.fingerprint() and first.vocab_size == VOCAB
  other = bpe_training.load_or_train("test-corpus", iter([TEXT]), VOCAB, 500)
  assert other.fingerprint() != first.fingerprint()  # another sample is another tokenizer
  c = config_lib.base_config().data
  c.tokenizer, c.vocab_size = "bpe", 100
  assert any(p.startswith("data.vocab_size=100: use an integer >= 259") for p in data_validate(c))


def test_hf_tokenizer_saves_into_the_run_and_bad_paths_are_refused(tmp_path, hf_tokenizer):
  hf_tokenizer.save(str(tmp_path / "tokenizer.json"))
  ours = HFTokenizer.from_path(str(tmp_path / "tokenizer.json"))
  ours.save(str(tmp_path / "run" / "tokenizer"))
  reloaded = gptjax.data.load_saved(str(tmp_path / "run" / "tokenizer"))
  assert reloaded.fingerprint() == ours.fingerprint() and reloaded.encode(UNSEEN) == ours.encode(
    UNSEEN
  )
  c = config_lib.base_config().data
  c.tokenizer = f"hf:{tmp_path}/missing.json"
  assert any("data.tokenizer='hf:" in p and "no such file" in p for p in data_validate(c))
  c.tokenizer = f"hf:{tmp_path}/tokenizer.json"
  assert data_validate(c) == []


# ------------------------------------------------------------------ import / export


def test_import_matches_an_independent_numpy_gpt2(hf_dir, imported):
  loaded = gptjax.load(imported)
  m = loaded.config.model
  assert (m.architecture, m.n_layer, m.d_model, m.n_head, m.d_ff, m.vocab_size, m.seq_len) == (
    "gpt2",
    N_LAYER,
    D,
    N_HEAD,
    4 * D,
    VOCAB,
    CTX,
  )
  assert loaded.step == 0 and loaded.tokenizer.eos_id == VOCAB - 1
  reference = numpy_gpt2(load_file(os.path.join(hf_dir, "model.safetensors")), IDS)
  assert np.abs(reference).max() > 1  # logits far from zero: the check has teeth
  np.testing.assert_allclose(_logits(loaded, IDS), reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("scan_layers", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_export_then_import_is_bit_identical(hf_dir, tmp_path, scan_layers):
  """HF -> gptjax (padded to 128 rows) -> HF gives back the exact tensors, and importing
  the export gives back the exact parameters."""
  layout = dict(scan_layers=scan_layers, pad_vocab_multiple=128)
  convert.import_hf(hf_dir, str(tmp_path / "a"), step=5, overrides=layout)
  first = gptjax.load(str(tmp_path / "a"))
  assert first.params["wte"].shape == (384, D) and not np.asarray(first.params["wte"][VOCAB:]).any()
  assert ("blocks" in first.params) == scan_layers
  convert.export_hf(str(tmp_path / "a"), str(tmp_path / "hf"))
  original = load_file(os.path.join(hf_dir, "model.safetensors"))
  exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
  assert set(exported) == {k for k in original if not k.endswith(".attn.bias")}
  for name, value in exported.items():
    assert value.dtype == np.float32 and np.array_equal(value, original[name]), name
  assert (
    json.loads((tmp_path / "hf" / "generation_config.json").read_text())["eos_token_id"]
    == VOCAB - 1
  )
  assert (tmp_path / "hf" / "tokenizer.json").read_text() == open(
    os.path.join(hf_dir, "tokenizer.json")
  ).read()
  convert.import_hf(str(tmp_path / "hf"), str(tmp_path / "b"), overrides=layout)
  second = gptjax.load(str(tmp_path / "b"))
  for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(second.params)):
    assert np.array_equal(a, b)
  convert.export_hf(str(tmp_path / "a"), str(tmp_path / "bf16"), dtype="bfloat16")
  halves = load_file(str(tmp_path / "bf16" / "model.safetensors"))
  assert halves["transformer.wte.weight"].dtype.name == "bfloat16"


def test_sharded_checkpoint_without_prefix_reads_the_same(hf_dir, tmp_path):
  original = load_file(os.path.join(hf_dir, "model.safetensors"))
  names = sorted(original)
  shards = {
    "model-00001-of-00002.safetensors": names[:10],
    "model-00002-of-00002.safetensors": names[10:],
  }
  for file, keys in shards.items():  # the second shard drops the 'transformer.' prefix
    save_file(
      {
        k if file.startswith("model-00001") else k.removeprefix("transformer."): original[k]
        for k in keys
      },
      str(tmp_path / file),
    )
  weight_map = {k: f for f, keys in shards.items() for k in keys}
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  expected = convert.read_tensors(hf_dir)
  found = convert.read_tensors(str(tmp_path))
  assert set(found) == set(expected) and all(np.array_equal(found[k], expected[k]) for k in found)


def test_bad_checkpoints_are_refused_by_name_and_write_nothing(tmp_path, hf_tokenizer):
  rng = np.random.default_rng(0)
  cases = {
    "fc": (
      dict(
        _random_gpt2(rng), **{"transformer.h.1.mlp.c_fc.weight": np.zeros((D, 100), np.float32)}
      ),
      _hf_config(),
      "tensor 'h.1.mlp.c_fc.weight': expected shape (64, 256) from config.json, found (64, 100)",
    ),
    "untied": (
      dict(_random_gpt2(rng), **{"lm_head.weight": np.ones((VOCAB, D), np.float32)}),
      _hf_config(),
      "'lm_head.weight' differs from 'wte.weight'",
    ),
    "relu": (
      _random_gpt2(rng),
      _hf_config(activation_function="relu"),
      "activation_function='relu'",
    ),
    "eps": (_random_gpt2(rng), _hf_config(layer_norm_epsilon=1e-6), "layer_norm_epsilon=1e-06"),
    "extra": (
      dict(_random_gpt2(rng), **{"transformer.h.2.ln_1.weight": np.ones(D, np.float32)}),
      _hf_config(),
      "tensors ['h.2.ln_1.weight'] are not part of a 2-layer gpt2 model",
    ),
  }
  for name, (tensors, config, message) in cases.items():
    source = _write_hf(tmp_path / name, tensors, config, hf_tokenizer)
    with pytest.raises(ValueError, match=None) as error:
      convert.import_hf(source, str(tmp_path / f"{name}_run"))
    assert message in str(error.value), (name, str(error.value))
    assert not (tmp_path / f"{name}_run").exists()


@pytest.mark.slow
def test_openai_gpt_imports_as_gpt1_and_exports_back(tmp_path, hf_tokenizer):
  """GPT-1's names (tokens_embed, positions_embed, no ln_f) map onto architecture='gpt1'."""
  tensors = {
    k.replace("wte.", "tokens_embed.").replace("wpe.", "positions_embed."): v
    for k, v in _random_gpt2(np.random.default_rng(2)).items()
    if "ln_f" not in k
  }
  config = {
    "model_type": "openai-gpt",
    "n_layer": N_LAYER,
    "n_embd": D,
    "n_head": N_HEAD,
    "vocab_size": VOCAB,
    "n_positions": CTX,
    "afn": "gelu",
    "layer_norm_epsilon": 1e-5,
  }
  source = _write_hf(tmp_path / "gpt1", tensors, config, hf_tokenizer)
  convert.import_hf(source, str(tmp_path / "run"))
  assert gptjax.load(str(tmp_path / "run")).config.model.architecture == "gpt1"
  convert.export_hf(str(tmp_path / "run"), str(tmp_path / "out"))
  assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "openai-gpt"
  exported = load_file(str(tmp_path / "out" / "model.safetensors"))
  assert all(np.array_equal(v, tensors[k]) for k, v in exported.items())
  with pytest.raises(ValueError, match="afn='relu'"):
    convert.model_from_hf_config({**config, "afn": "relu"})


def test_gpt2_small_maps_to_the_hub_config_and_back():
  """experiments/gpt2_small.py <-> the fields of openai-community/gpt2's config.json."""
  # Loaded by path, as --config does: plain `pytest` does not put the repo root on sys.path.
  spec = importlib.util.spec_from_file_location("gpt2_small", f"{ROOT}/experiments/gpt2_small.py")
  gpt2_small = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(gpt2_small)
  model = gpt2_small.get_config().model
  hub = {
    "activation_function": "gelu_new",
    "architectures": ["GPT2LMHeadModel"],
    "bos_token_id": 50256,
    "eos_token_id": 50256,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2",
    "n_ctx": 1024,
    "n_embd": 768,
    "n_head": 12,
    "n_layer": 12,
    "n_positions": 1024,
    "vocab_size": 50257,
  }
  fields = convert.model_from_hf_config(hub)
  assert fields == {k: model[k] for k in fields}
  exported = convert.hf_config(model, eos_id=50256)
  assert {k: exported[k] for k in hub if k != "n_ctx"} == {
    k: v for k, v in hub.items() if k != "n_ctx"
  }
  assert convert.model_from_hf_config(exported) == fields


# ------------------------------------------------------------------ train.init_from


def _shardings(config):
  mesh = sharding.make_mesh(config.mesh)
  model = gptjax.model.GPT(gptjax.model.model_config(config.model))
  abstract = nn.unbox(
    jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, config.model.seq_len), np.int32))[
        "params"
      ]
    )
  )
  return jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), abstract)


def _run_config(**model):
  c = config_lib.base_config()
  c.model.update(
    {
      **dict(n_layer=N_LAYER, d_model=D, n_head=N_HEAD, d_ff=4 * D, vocab_size=VOCAB, seq_len=CTX),
      **model,
    }
  )
  return c


def test_init_from_hf_run_and_step_forms_load_exactly(hf_dir, imported, tmp_path):
  from gptjax import checkpoint

  reference = gptjax.load(imported)
  # A second checkpoint (step 9, parameters doubled) in a copy of the imported run.
  import shutil

  run = str(tmp_path / "run")
  shutil.copytree(imported, run)
  doubled = jax.tree.map(lambda a: np.asarray(a) * 2, jax.device_get(reference.params))
  mngr = checkpoint.manager(run, reference.config)
  checkpoint.save(mngr, 9, {"params": doubled}, reference.config, {})
  checkpoint.wait(mngr)
  mngr.close()

  # The run's layout (unrolled, 384 padded rows) is not the source's (scanned, 300 rows).
  for spec, expected, scale in (
    (f"hf:{hf_dir}", f"hf:{hf_dir}", 1),
    (f"run:{run}", f"run:{run}@9", 2),
    (f"run:{run}@0", f"run:{run}@0", 1),
  ):
    c = _run_config(scan_layers=False, pad_vocab_multiple=128)
    c.train.init_from = spec
    config_lib.validate(c)
    resolved = init_from.resolve(c)
    assert resolved.train.init_from == expected and c.train.init_from == spec
    params = init_from.load_params(resolved, _shardings(resolved))
    assert "block_1" in params and params["wte"].shape == (384, D)
    assert not np.asarray(params["wte"][VOCAB:]).any()
    ours = convert.hf_tensors(jax.device_get(params), resolved.model)
    for name, value in convert.hf_tensors(
      jax.device_get(reference.params), reference.config.model
    ).items():
      assert np.array_equal(ours[name], scale * value), (spec, name)


def test_init_from_refuses_another_shape_before_any_work(hf_dir, tmp_path):
  c = _run_config(n_layer=3, d_ff=128)
  c.data.tokenizer = "bytes"
  c.train.init_from = f"hf:{hf_dir}"
  with pytest.raises(ValueError) as error:
    train.run(c, str(tmp_path / "run"))
  message = str(error.value)
  assert (
    "model.n_layer: source 2, config 3" in message
    and "model.d_ff: source 256, config 128" in message
  )
  assert "model.d_model" not in message and not (tmp_path / "run").exists()
  for bad, words in (
    ("gs", r"use '' \(fresh\)"),
    ("run:x@last", "must be an integer"),
    (f"run:{tmp_path}/nowhere", "no directory"),
  ):
    c.train.init_from = bad
    with pytest.raises(ValueError, match=words):
      config_lib.validate(c)


# ------------------------------------------------------------------ against transformers


@pytest.fixture(scope="module")
def hf_models():
  torch = pytest.importorskip(
    "torch",
    reason="torch is not installed: the transformers "
    "comparisons need it (pip install 'gptjax[test]')",
  )
  transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install 'gptjax[test]')"
  )
  return torch, transformers


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gpt2", "openai-gpt"])
def test_transformers_model_imports_and_exports_exactly(hf_models, tmp_path, hf_tokenizer, kind):
  torch, transformers = hf_models
  torch.manual_seed(0)
  if kind == "gpt2":
    model = transformers.GPT2LMHeadModel(
      transformers.GPT2Config(
        n_layer=N_LAYER,
        n_embd=D,
        n_head=N_HEAD,
        vocab_size=VOCAB,
        n_positions=CTX,
        bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
      )
    )
  else:
    model = transformers.OpenAIGPTLMHeadModel(
      transformers.OpenAIGPTConfig(
        n_layer=N_LAYER, n_embd=D, n_head=N_HEAD, vocab_size=VOCAB, n_positions=CTX
      )
    )
  model.eval().save_pretrained(str(tmp_path / "hf"))
  hf_tokenizer.save(str(tmp_path / "hf" / "tokenizer.json"))
  with torch.no_grad():
    reference = model(torch.tensor(IDS)).logits.numpy()

  convert.import_hf(
    str(tmp_path / "hf"), str(tmp_path / "run"), overrides=dict(pad_vocab_multiple=128)
  )
  loaded = gptjax.load(str(tmp_path / "run"))
  np.testing.assert_allclose(_logits(loaded, IDS), reference, atol=1e-4, rtol=0)

  convert.export_hf(str(tmp_path / "run"), str(tmp_path / "out"))
  back, info = transformers.AutoModelForCausalLM.from_pretrained(
    str(tmp_path / "out"), output_loading_info=True
  )
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
  with torch.no_grad():
    np.testing.assert_allclose(
      back.eval()(torch.tensor(IDS)).logits.numpy(), reference, atol=1e-5, rtol=0
    )
    prompt = IDS[:1, :8]
    hf_new = back.generate(
      torch.tensor(prompt),
      max_new_tokens=16,
      do_sample=False,
      eos_token_id=VOCAB - 1,
      pad_token_id=VOCAB - 1,
    )[0, 8:].tolist()
  [[ours]] = gptjax.generate.generate(
    loaded.model,
    loaded.params,
    loaded.tokenizer,
    [prompt[0].tolist()],
    gptjax.generate.Settings(max_new_tokens=16),
  )
  hf_new = hf_new[: hf_new.index(VOCAB - 1) + 1] if VOCAB - 1 in hf_new else hf_new
  assert ours.tokens == hf_new and len(ours.tokens) >= 1
  exported_tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
  assert exported_tokenizer(UNSEEN)["input_ids"] == loaded.tokenizer.encode(UNSEEN)
  assert exported_tokenizer.eos_token_id == loaded.tokenizer.eos_id


@pytest.mark.slow
def test_training_from_hf_weights_records_the_source(hf_dir, tmp_path):
  """A short run from hf:DIR with its tokenizer: the source goes into config.json and
  summary.json, and the first step's loss is the imported model's loss on that batch."""
  (tmp_path / "corpus").mkdir()
  for i in range(40):
    (tmp_path / "corpus" / f"{i}.txt").write_text(TEXT[i * 20 :] + f" document {i}\n")
  c = _run_config()
  c.data.source = str(tmp_path / "corpus" / "*.txt")
  c.data.tokenizer = f"hf:{hf_dir}"
  c.data.eval_sequences = 8
  c.data.validation_percent = 25
  c.train.init_from = f"hf:{hf_dir}"
  c.train.update(dict(steps=2, batch_size=8, log_every=1, num_samples=0, eval_every=0))
  c.optim.warmup_steps = 1
  workdir = str(tmp_path / "run")
  summary = train.run(c, workdir)
  assert summary["init_from"] == f"hf:{hf_dir}"
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["train"]["init_from"] == f"hf:{hf_dir}"
  _, lm_data = gptjax.data.load(c.data, CTX, c.train.seed)
  batch = np.asarray(lm_data.train_batch(0, 8, 0, 1))
  logits = numpy_gpt2(load_file(os.path.join(hf_dir, "model.safetensors")), batch[:, :-1])
  log_probs = (
    logits
    - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
    - logits.max(-1, keepdims=True)
  )
  expected = -np.take_along_axis(log_probs, batch[:, 1:, None], axis=-1).mean()
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    first = json.loads(f.readline())
  assert first["step"] == 1 and abs(first["train_loss"] - expected) < 1e-4


@pytest.mark.slow
def test_convert_command_line(hf_dir, tmp_path):
  """The two commands as a user runs them, and their one-line errors."""
  import subprocess
  import sys

  def convert_cli(*args):
    return subprocess.run(
      [sys.executable, "-m", "gptjax.convert", *args],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
    )

  run, out = str(tmp_path / "run"), str(tmp_path / "out")
  done = convert_cli(
    "from-hf", f"--hf_dir={hf_dir}", f"--workdir={run}", "--step=3", "--scan_layers=false"
  )
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip() == (
    f"wrote {run}: gpt2, 2 layers, d_model 64, vocab 300, context 32, checkpoint step 3"
  )
  done = convert_cli("to-hf", f"--workdir={run}", f"--hf_dir={out}", "--dtype=bfloat16")
  assert done.returncode == 0 and done.stdout.strip() == (
    f"wrote {out}: GPT2LMHeadModel, step 3, bfloat16"
  ), done.stderr
  for args, error in (
    (
      ("from-hf", f"--hf_dir={hf_dir}", f"--workdir={run}"),
      f"error: --workdir={run}: already holds a run; convert into a new directory",
    ),
    (
      ("to-hf", f"--workdir={run}", f"--hf_dir={out}", "--step=7"),
      f"error: --step=7: no checkpoint at that step in {run}/checkpoints; it has steps 3",
    ),
    (
      ("from-hf", f"--hf_dir={tmp_path}", f"--workdir={tmp_path}/x"),
      f"error: --hf_dir={tmp_path}: no config.json there; point at a directory written by "
      "save_pretrained (or downloaded from the Hub)",
    ),
  ):
    done = convert_cli(*args)
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1] == error


def test_export_says_it_leaves_out_fine_tuning_special_tokens(tmp_path):
  """A fine-tuned run's special-token rows have no place in the exported vocabulary: the
  export keeps the tokenizer's rows and says what it left out."""
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  config = tiny_config(**{"data.tokenizer": "bytes", "model.special_tokens": 3})
  (tmp_path / "run" / "config.json").write_text(config.to_json_best_effort())
  ByteTokenizer().save(os.path.join(workdir, "tokenizer"))
  mesh = sharding.make_mesh(config.mesh)
  program = train.build(config, mesh, ByteTokenizer.eos_id)
  with sharding.active(mesh, program.axis_rules):
    mngr = checkpoint.manager(workdir, config)
    checkpoint.save(mngr, 1, program.init(0), config, {})
    checkpoint.wait(mngr)
    mngr.close()
  notes = convert.export_hf(workdir, str(tmp_path / "hf"))
  vocab = config.model.vocab_size
  assert any(f"the 3 fine-tuning special tokens (ids {vocab}..{vocab + 2})" in n for n in notes)
  exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
  assert exported["transformer.wte.weight"].shape[0] == vocab
