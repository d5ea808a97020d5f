"""The default configuration and its validation.

Every field lives here with a one-line comment, so an experiment file only states
what differs and no module reads a hidden knob. Validation runs before any work
starts, so a typo costs a second, not a compile or a dataset build.
"""

from __future__ import annotations

import decimal
import os
import re
from collections.abc import Mapping
from typing import Any

import ml_collections
from etils import epath

from gptjax import batch_shape

REMAT_POLICIES = ("none", "dots_with_no_batch_dims_saveable", "nothing_saveable")
ARCHITECTURES = ("gpt2", "gpt1")
ATTENTION_IMPLS = ("blocks", "xla", "cudnn")
DTYPES = ("float32", "bfloat16")
MESH_AXES = ("data", "fsdp", "tensor")
OBJECTIVES = ("lm", "sft", "classify", "choice", "distill")  # the losses of gptjax/objectives.py
KL_DIRECTIONS = ("forward", "reverse")  # distill.kl: KL(teacher || student), or reversed
INIT_FROM_KINDS = ("run", "hf")  # train.init_from sources: a gptjax run, a Hugging Face directory


def base_config() -> ml_collections.ConfigDict:
  """A small GPT-2-style model on the embedded corpus; experiment files override it."""
  c = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict()
  c.model.architecture = (
    "gpt2"  # 'gpt2' (pre-LayerNorm + final LayerNorm; GPT-2/GPT-3) or 'gpt1' (post-LayerNorm)
  )
  c.model.n_layer = 4  # transformer blocks
  c.model.d_model = 256  # residual stream width
  c.model.n_head = 4  # attention heads; d_model / n_head is the head size
  c.model.d_ff = 1024  # MLP hidden width (GPT uses 4 * d_model)
  c.model.vocab_size = 8192  # embedding rows; must be >= the tokenizer's vocabulary
  c.model.special_tokens = 0  # embedding rows after vocab_size for fine-tuning's start/delimiter/extract tokens (classify/choice: 3)
  c.model.pad_vocab_multiple = (
    1  # round the embedding table up to a multiple of this (128 helps accelerators); 1 = off
  )
  c.model.seq_len = 256  # context length in tokens (also the length of every training row)
  c.model.dropout = 0.0  # dropout on embeddings and on each residual branch
  c.model.attn_dropout = 0.0  # dropout on attention probabilities (not with attention_impl='cudnn')
  c.model.dtype = (
    "float32"  # compute dtype: 'float32' or 'bfloat16'; logits and loss are always float32
  )
  c.model.param_dtype = "float32"  # dtype parameters and optimizer state are stored in
  c.model.scan_layers = (
    True  # nn.scan over blocks: one compiled block, parameters stacked on a 'layers' axis
  )
  c.model.scan_unroll = 0  # with scan_layers: layers per loop iteration; 0 = all on CPU, 1 on accelerators (gptjax.model.scan_unroll)
  c.model.remat_policy = "none"  # 'none', 'dots_with_no_batch_dims_saveable' or 'nothing_saveable'
  c.model.attention_impl = "blocks"  # 'blocks' (gptjax.attention: skips the masked blocks, anywhere), or jax.nn.dot_product_attention's 'xla' (anywhere) or 'cudnn' (GPU)
  c.model.init_std = (
    0.02  # N(0, init_std) for weights; residual output projections get / sqrt(2 * n_layer)
  )

  c.data = ml_collections.ConfigDict()
  c.data.source = "embedded"  # 'embedded' (stdlib source, offline), a TFDS name ('c4/en:3.1.0', 'lm1b') or a glob of .txt/.jsonl files
  c.data.data_dir = ""  # where TFDS datasets are prepared and read (local or gs://); '' -> $GPTJAX_CACHE/tensorflow_datasets
  c.data.download = False  # TFDS names only: download and prepare the dataset if data_dir lacks it (else fail with the command)
  c.data.train_split = (
    "train"  # TFDS names only: split to train on; slices work, e.g. 'train[:99%]'
  )
  c.data.eval_split = "validation"  # TFDS names only: split for the fixed eval set, e.g. 'train[99%:]' if there is none
  c.data.text_field = "text"  # TFDS names only: the feature holding each document's text
  c.data.txt_documents = (
    "file"  # .txt globs: 'file' (one document per file) or 'blank_lines' (split on blank lines)
  )
  c.data.jsonl_field = (
    "text"  # .jsonl globs: the field of each line's JSON object holding the document
  )
  c.data.validation_percent = (
    5  # embedded and globs: percent of documents held out, chosen by a hash of their id
  )
  c.data.document_mask = (
    False  # let attention see only the current document (segment ids and positions per row)
  )
  c.data.tokenizer = "sentencepiece"  # 'sentencepiece' or 'bpe' (GPT-2-style byte-level BPE; both trained on the corpus), 'bytes', 'hf:PATH' (a Hugging Face tokenizer.json, e.g. GPT-2's) or a path to a .model file
  c.data.vocab_size = (
    8192  # sentencepiece/bpe vocabulary to train (ignored for 'bytes', 'hf:' and .model paths)
  )
  c.data.spm_model_type = "bpe"  # sentencepiece algorithm: 'bpe' or 'unigram'
  c.data.tokenizer_sample_chars = (
    20_000_000  # characters of training text sampled to train the tokenizer
  )
  c.data.eval_sequences = 256  # fixed validation rows of seq_len tokens scored at every eval

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-3  # peak learning rate, reached at the end of warmup
  c.optim.warmup_steps = 50  # linear warmup from 0 to lr
  c.optim.warmup_tokens = (
    0  # > 0: warm up over this many tokens instead (rounded up to whole updates)
  )
  c.optim.schedule = "cosine"  # after warmup: 'cosine', 'linear' (GPT-1's fine-tuning), 'wsd' (warmup-stable-decay) or 'constant'
  c.optim.min_lr_ratio = 0.1  # the decay ends at lr * min_lr_ratio on its last update
  c.optim.decay_tokens = 0  # > 0: the decay ends where the tokens seen reach this (flat after; GPT-3: 260B), else on the last update
  c.optim.decay_fraction = 0.2  # wsd: the share of the updates (to the decay's end) that decay, after the stable phase (0 = constant)
  c.optim.decay_shape = (
    "linear"  # wsd: the decay's shape, 'linear' or '1-sqrt' (Hägele et al. 2024)
  )
  c.optim.b1 = 0.9  # AdamW beta1
  c.optim.b2 = 0.95  # AdamW beta2
  c.optim.eps = 1e-8  # AdamW epsilon
  c.optim.weight_decay = (
    0.1  # decoupled weight decay on weight matrices (an embed axis and another dim; optim.decays)
  )
  c.optim.decay_embeddings = (
    False  # also decay token/position embeddings (biases and LayerNorm never are)
  )
  c.optim.clip_norm = 1.0  # global gradient-norm clip; 0 disables

  c.train = ml_collections.ConfigDict()
  c.train.steps = 600  # optimizer updates
  c.train.tokens = 0  # if > 0, steps = ceil(tokens / (batch_size * seq_len)) instead (through train.batch_ramp's or train.seq_len_warmup's stages)
  c.train.batch_size = 16  # global batch in sequences per optimizer update
  c.train.grad_accum_steps = 1  # micro-batches per update; batch_size must divide by it
  c.train.batch_ramp = ml_collections.ConfigDict()  # GPT-3's batch ramp (gptjax/batch_shape.py)
  c.train.batch_ramp.start_tokens = (
    0  # first stage's global batch in tokens; 0 = constant batch_size
  )
  c.train.batch_ramp.tokens = 0  # tokens over which the batch grows to batch_size
  c.train.batch_ramp.stages = (
    4  # batch sizes from start up to (not including) batch_size, one per equal token span
  )
  c.train.seq_len_warmup = ml_collections.ConfigDict()  # Li et al. 2022 (gptjax/batch_shape.py)
  c.train.seq_len_warmup.start = 0  # first stage's context in tokens; 0 = always model.seq_len
  c.train.seq_len_warmup.tokens = 0  # tokens over which the context grows to model.seq_len
  c.train.seq_len_warmup.stages = 4  # contexts from start up to model.seq_len, one per token span
  c.train.seed = 0  # seeds parameters, dropout and data order
  c.train.log_every = 25  # steps between console/metrics.jsonl train rows
  c.train.eval_every = 200  # steps between evals (and one at the end); 0 = only at the end
  c.train.checkpoint_every = 200  # steps between checkpoints (and one at the end)
  c.train.keep_checkpoints = 3  # most recent checkpoints kept on disk
  c.train.num_samples = 2  # samples generated at the end (written to samples.txt)
  c.train.sample_tokens = 128  # new tokens per sample
  c.train.sample_strategy = (
    "sample"  # 'sample', 'greedy' (one sample) or 'beam' (the num_samples best beams)
  )
  c.train.sample_temperature = 0.8  # softmax temperature for samples
  c.train.sample_top_k = 40  # sample only from the k most likely tokens; 0 = all
  c.train.sample_top_p = (
    1.0  # then only from the smallest set of tokens with probability >= top_p; 1 = all
  )
  c.train.sample_num_beams = 4  # beam: live hypotheses; must be >= num_samples
  c.train.profile_steps = (
    ""  # 'A:B' writes a jax.profiler trace of steps A..B-1 to WORKDIR/profile; '' = none
  )
  c.train.peak_tflops = (
    0.0  # per-device peak for MFU; 0 = look up the device, or measure a matmul on CPU
  )
  c.train.dry_run = False  # compile the train step for the mesh, print per-device memory, and exit
  c.train.compile_cache = True  # reuse compiled programs at the next start: JAX's cache in $GPTJAX_CACHE/xla (gptjax/compile_cache.py), and the traced init and train step in $GPTJAX_CACHE/traced (gptjax/trace_cache.py); False = trace and compile every time
  c.train.epochs = 0  # sft/classify/choice: if > 0, steps = ceil(epochs * training examples (sft: packed rows) / batch_size)
  c.train.objective = "lm"  # the loss of the one train step: 'lm', 'sft', 'classify', 'choice' or 'distill' (gptjax/objectives.py)
  c.train.init_from = ""  # '' (fresh), 'run:DIR', 'run:DIR@STEP' or 'hf:DIR': start from those parameters (fresh optimizer, step 0)
  c.train.branch_from = ""  # 'DIR@STEP': a cooldown branch, continuing DIR's checkpoint at STEP whole (state, optimizer, data position) under this run's schedule
  c.train.extend = False  # on resume, accept changed train.steps/tokens or optim.* (the schedule is recomputed, and the log says how the lr moves)

  c.finetune = ml_collections.ConfigDict()
  c.finetune.lm_weight = 0.5  # classify/choice: GPT-1's lambda on the auxiliary LM loss over the inputs; 0 = task loss only
  c.finetune.num_classes = 2  # classify: outputs of the linear head on the extract token
  c.finetune.train_file = (
    ""  # sft/classify/choice: a .jsonl, .csv or .tsv file of training examples
  )
  c.finetune.eval_file = (
    ""  # the held-out examples every eval scores (accuracy ± SE, or sft's masked loss)
  )
  c.finetune.source = ""  # instead of the files: a TFDS catalog dataset prepared in data.data_dir ('glue/sst2', 'glue/rte', 'snli', 'piqa', ...)
  c.finetune.train_split = (
    "train"  # finetune.source: the TFDS split (or slice, 'train[:90%]') to train on
  )
  c.finetune.eval_split = "validation"  # finetune.source: the TFDS split every eval scores
  c.finetune.text_field = (
    "text"  # classify: the text (entailment: the premise); choice: the context
  )
  c.finetune.pair_field = (
    ""  # classify: a second text ('' = none), joined as [start] text [delim] pair [extract]
  )
  c.finetune.similarity = False  # classify with pair_field: both orders, their final representations added (GPT-1's similarity)
  c.finetune.choices_field = (
    "choices"  # choice: a jsonl list field, or comma-separated csv/tsv column names
  )
  c.finetune.label_field = (
    "label"  # classify/choice: the integer label (class, or index of the right answer)
  )
  c.finetune.prompt_field = "prompt"  # sft: the prompt (no loss on it)
  c.finetune.response_field = (
    "response"  # sft: the response (loss on it and the closing end-of-text)
  )
  c.finetune.too_long = "truncate"  # an example over model.seq_len: 'truncate' its first text from the left, or 'refuse'

  c.distill = ml_collections.ConfigDict()
  c.distill.teacher = ""  # distill: 'run:DIR', 'run:DIR@STEP' or 'hf:DIR', the frozen teacher (same grammar as train.init_from)
  c.distill.temperature = 1.0  # T: softmax(logits / T) on both sides; the KL is scaled by T^2
  c.distill.alpha = 0.5  # weight of the soft loss; the data's cross-entropy gets 1 - alpha
  c.distill.kl = "forward"  # 'forward': KL(teacher || student); 'reverse': KL(student || teacher)
  c.distill.teacher_dtype = "float32"  # the teacher's parameters: 'float32' or 'bfloat16'

  c.eval = ml_collections.ConfigDict()
  c.eval.tasks = ""  # after training: comma-separated 'perplexity' or TASK=FILE.jsonl (hellaswag, lambada, choice), each scored like python -m gptjax.evaluate
  c.eval.num_fewshot = 0  # demonstrations per prompt for eval.tasks

  c.mesh = ml_collections.ConfigDict()
  c.mesh.ici = ml_collections.ConfigDict(
    dict(data=-1, fsdp=1, tensor=1)
  )  # devices per axis within a slice; one -1 takes the rest
  c.mesh.dcn = ml_collections.ConfigDict(
    dict(data=1, fsdp=1, tensor=1)
  )  # slices per axis across the data-center network
  c.mesh.rules = (  # logical axis -> mesh axes; see README "Parallelism"
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
  )
  c.mesh.cpu_devices = 0  # XLA:CPU devices to split one host into (CPU backend only; gptjax.cpu_devices); 0 = one per core, as many as the mesh's -1 axis, the micro-batch and a quarter of RAM (16 bytes/param per copy) allow; 1 = one device
  return c


def padded_vocab_size(model: ml_collections.ConfigDict) -> int:
  """Embedding rows actually allocated: vocab_size + special_tokens rounded up to
  pad_vocab_multiple."""
  m = model.pad_vocab_multiple
  return -(-(model.vocab_size + model.special_tokens) // m) * m


def train_steps(c: ml_collections.ConfigDict) -> int:
  """Optimizer updates, derived from train.tokens when that is set (through the batch
  ramp's or the sequence-length warmup's stages: smaller early batches make more updates)."""
  if c.train.tokens > 0:
    return batch_shape.total_steps(batch_shape.table(c.train, c.model.seq_len), c.train.tokens)
  return c.train.steps


def _batch_ramp_problems(t: ml_collections.ConfigDict, seq_len: int) -> list[str]:
  """train.batch_ramp's problems: whole micro-batches in every stage, nothing ambiguous."""
  r, errors = t.batch_ramp, []
  for name in ("start_tokens", "tokens"):
    _positive(errors, f"train.batch_ramp.{name}", r[name], allow_zero=True)
  _positive(errors, "train.batch_ramp.stages", r.stages)
  sizes = (t.batch_size, t.grad_accum_steps, seq_len)
  if errors or r.start_tokens == 0 or not all(isinstance(v, int) and v > 0 for v in sizes):
    return errors
  full = t.batch_size * seq_len
  if r.start_tokens > full:
    return [
      f"train.batch_ramp.start_tokens={r.start_tokens}: above the full batch "
      f"(train.batch_size * model.seq_len = {full}); a ramp grows the batch"
    ]
  if r.start_tokens % seq_len:
    return [
      f"train.batch_ramp.start_tokens={r.start_tokens}: not whole sequences of "
      f"model.seq_len={seq_len}; use a multiple of {seq_len}"
    ]
  if t.epochs > 0:
    return [
      f"train.epochs={t.epochs} with train.batch_ramp: epochs count constant batches; "
      "give the length as train.tokens, or set train.batch_ramp.start_tokens=0"
    ]
  if r.tokens == 0 and r.start_tokens < full:
    return ["train.batch_ramp.tokens=0: set the ramp's length in tokens (or start_tokens=0)"]
  micro = t.batch_size // t.grad_accum_steps
  if (r.start_tokens // seq_len) % micro:
    errors.append(
      f"train.batch_ramp.start_tokens={r.start_tokens}: stage 0 would train on "
      f"{r.start_tokens // seq_len} sequences, not whole micro-batches of {micro} "
      "(train.batch_size / train.grad_accum_steps); raise grad_accum_steps or start_tokens"
    )
  return errors


def _seq_len_warmup_problems(t: ml_collections.ConfigDict, seq_len: int) -> list[str]:
  """train.seq_len_warmup's problems: a start below the context, a length, one curriculum."""
  w, errors = t.seq_len_warmup, []
  for name in ("start", "tokens"):
    _positive(errors, f"train.seq_len_warmup.{name}", w[name], allow_zero=True)
  _positive(errors, "train.seq_len_warmup.stages", w.stages)
  if errors or w.start == 0 or not isinstance(seq_len, int):
    return errors
  if w.start >= seq_len:
    return [
      f"train.seq_len_warmup.start={w.start}: not below model.seq_len={seq_len}; "
      "a warmup grows the context (0 turns it off)"
    ]
  if w.tokens == 0:
    return ["train.seq_len_warmup.tokens=0: set the warmup's length in tokens (or start=0)"]
  if t.batch_ramp.start_tokens:
    errors.append(
      "train.seq_len_warmup with train.batch_ramp: use one of them (set "
      "train.batch_ramp.start_tokens=0 or train.seq_len_warmup.start=0)"
    )
  if t.epochs > 0:
    errors.append(
      f"train.epochs={t.epochs} with train.seq_len_warmup: epochs count full-length rows; "
      "give the length as train.tokens or train.steps"
    )
  if t.objective != "lm":
    errors.append(
      f"train.seq_len_warmup with train.objective={t.objective!r}: only 'lm' trains on "
      "truncated rows; set train.seq_len_warmup.start=0"
    )
  return errors


def _choice(errors: list[str], field: str, value, allowed) -> None:
  if value not in allowed:
    errors.append(f"{field}={value!r}: unknown value; use one of {', '.join(map(repr, allowed))}")


def _positive(errors: list[str], field: str, value, *, allow_zero: bool = False) -> None:
  ok = value >= 0 if allow_zero else value > 0
  if not isinstance(value, int) or isinstance(value, bool) or not ok:
    bound = ">= 0" if allow_zero else "> 0"
    errors.append(f"{field}={value!r}: must be an integer {bound}")


def override(
  c: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
  """A copy of `c` with `{"group.field": value}` applied (any depth: "mesh.ici.data").

  The one way sweeps, resumes and tests address fields by name, so a misspelt field
  fails here, naming it, and a wrong type fails as ConfigDict's TypeError.
  """
  out = c.copy_and_resolve_references()
  for key, value in overrides.items():
    *groups, field = key.split(".")
    node = out
    for name in groups:
      if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
        raise KeyError(f"{key}: no such config field; see gptjax/config.py for the fields")
      node = node[name]
    if not groups or field not in node:
      raise KeyError(f"{key}: no such config field; see gptjax/config.py for the fields")
    node[field] = value
  return out


def parse_init_from(spec: str, field: str = "train.init_from") -> tuple[str, str, int | None]:
  """(kind, directory, step or None) of a non-empty train.init_from (or another `field`
  of the same grammar: distill.teacher); ValueError if malformed."""
  kind, _, rest = spec.partition(":")
  step = None
  if kind == "run" and "@" in rest:
    rest, _, step_text = rest.rpartition("@")
    if not step_text.isdigit():
      raise ValueError(
        f"{field}={spec!r}: the step after '@' must be an integer, e.g. run:runs/quickstart@600"
      )
    step = int(step_text)
  if kind not in INIT_FROM_KINDS or not rest:
    raise ValueError(
      f"{field}={spec!r}: use "
      + ("" if field == "distill.teacher" else "'' (fresh), ")
      + "'run:DIR', 'run:DIR@STEP' or 'hf:DIR'"
    )
  return kind, os.path.expanduser(rest), step


def parse_branch_from(spec: str) -> tuple[str, int]:
  """(directory, step) of a non-empty train.branch_from 'DIR@STEP' (train.init_from's
  'run:DIR@STEP' without the kind, and the step required); ValueError if malformed."""
  directory, _, step = spec.rpartition("@") if isinstance(spec, str) else ("", "", "")
  if not directory or not step.isdigit():
    raise ValueError(
      f"train.branch_from={spec!r}: use 'DIR@STEP' (a run directory and the step of one "
      "of its checkpoints), e.g. runs/stable@4000"
    )
  return os.path.expanduser(directory), int(step)


def _init_from_problems(spec: str, field: str = "train.init_from") -> list[str]:
  """Problems with the form of train.init_from (or distill.teacher) and the existence of
  its directory."""
  if not spec:
    return []
  try:
    _, directory, _ = parse_init_from(spec, field)
  except ValueError as e:
    return [str(e)]
  if not epath.Path(directory).is_dir():
    return [f"{field}={spec!r}: no directory {directory}"]
  return []


def _distill_problems(c: ml_collections.ConfigDict) -> list[str]:
  """Problems with the distill.* settings (the teacher's tokenizer is checked on load)."""
  d, distilling = c.distill, c.train.objective == "distill"
  if not isinstance(d.teacher, str):
    return [f"distill.teacher={d.teacher!r}: use 'run:DIR', 'run:DIR@STEP' or 'hf:DIR'"]
  errors = _init_from_problems(d.teacher, "distill.teacher")
  if distilling and not d.teacher:
    errors.append(
      "distill.teacher='': train.objective='distill' needs a teacher; set it to 'run:DIR'"
    )
  if d.teacher and not distilling:
    errors.append(
      f"distill.teacher={d.teacher!r}: only read by train.objective='distill' (now "
      f"{c.train.objective!r}); set the objective or clear the teacher"
    )
  if not isinstance(d.temperature, (int, float)) or not d.temperature > 0:
    errors.append(f"distill.temperature={d.temperature!r}: must be a number > 0 (1 = plain)")
  if not isinstance(d.alpha, (int, float)) or not 0 <= d.alpha <= 1:
    errors.append(f"distill.alpha={d.alpha!r}: must be in [0, 1] (the soft loss's weight)")
  _choice(errors, "distill.kl", d.kl, KL_DIRECTIONS)
  _choice(errors, "distill.teacher_dtype", d.teacher_dtype, DTYPES)
  return errors


def profile_steps(spec: str) -> tuple[int, int] | None:
  """(A, B) of train.profile_steps "A:B" with 0 <= A < B; None for "" (no trace)."""
  if not spec:
    return None
  start, sep, stop = spec.partition(":")
  if not (sep and start.isdigit() and stop.isdigit() and int(start) < int(stop)):
    raise ValueError(
      f"train.profile_steps={spec!r}: use 'A:B' with 0 <= A < B (steps A to "
      "B-1 are traced), e.g. '10:15', or '' for no trace"
    )
  return int(start), int(stop)


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ValueError listing every bad field, each with its value and the fix."""
  errors: list[str] = []
  m, t, o = c.model, c.train, c.optim
  for name in (
    "n_layer",
    "d_model",
    "n_head",
    "d_ff",
    "vocab_size",
    "seq_len",
    "pad_vocab_multiple",
  ):
    _positive(errors, f"model.{name}", m[name])
  if not errors and m.d_model % m.n_head:
    errors.append(
      f"model.d_model={m.d_model}: not divisible by model.n_head={m.n_head}; "
      f"pick n_head from the divisors of d_model"
    )
  _choice(errors, "model.architecture", m.architecture, ARCHITECTURES)
  _choice(errors, "model.remat_policy", m.remat_policy, REMAT_POLICIES)
  _positive(errors, "model.scan_unroll", m.scan_unroll, allow_zero=True)
  _choice(errors, "model.attention_impl", m.attention_impl, ATTENTION_IMPLS)
  _choice(errors, "model.dtype", m.dtype, DTYPES)
  _choice(errors, "model.param_dtype", m.param_dtype, DTYPES)
  for name in ("dropout", "attn_dropout"):
    if not 0.0 <= m[name] < 1.0:
      errors.append(f"model.{name}={m[name]!r}: must be in [0, 1)")
  if m.attention_impl == "cudnn" and m.dtype != "bfloat16":
    errors.append(
      f"model.attention_impl='cudnn' with model.dtype={m.dtype!r}: cuDNN's fused attention "
      f"takes bfloat16 inputs; set model.dtype='bfloat16' or model.attention_impl='blocks'"
    )
  if m.attn_dropout > 0 and m.attention_impl == "cudnn":
    errors.append(
      f"model.attn_dropout={m.attn_dropout}: attention-probability dropout needs "
      f"model.attention_impl='blocks' or 'xla' (got 'cudnn'); set one of them"
    )

  for name in (
    "batch_size",
    "grad_accum_steps",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
  ):
    _positive(errors, f"train.{name}", t[name])
  for name in ("steps", "tokens", "eval_every", "num_samples", "sample_tokens", "sample_top_k"):
    _positive(errors, f"train.{name}", t[name], allow_zero=True)
  if t.steps == 0 and t.tokens == 0:
    errors.append("train.steps=0 and train.tokens=0: set one of them to the run length")
  if (
    isinstance(t.batch_size, int)
    and isinstance(t.grad_accum_steps, int)
    and t.grad_accum_steps > 0
    and t.batch_size % t.grad_accum_steps
  ):
    errors.append(
      f"train.batch_size={t.batch_size}: not divisible by train.grad_accum_steps="
      f"{t.grad_accum_steps}; make the global batch a multiple of the micro-batch count"
    )
  errors.extend(_batch_ramp_problems(t, m.seq_len))
  errors.extend(_seq_len_warmup_problems(t, m.seq_len))
  _choice(errors, "train.sample_strategy", t.sample_strategy, ("sample", "greedy", "beam"))
  if t.sample_temperature <= 0:
    errors.append(f"train.sample_temperature={t.sample_temperature!r}: must be > 0")
  if not 0 < t.sample_top_p <= 1:
    errors.append(f"train.sample_top_p={t.sample_top_p!r}: must be in (0, 1] (1 = all tokens)")
  _positive(errors, "train.sample_num_beams", t.sample_num_beams)
  if (
    t.sample_strategy == "beam"
    and isinstance(t.sample_num_beams, int)
    and t.num_samples > t.sample_num_beams
  ):
    errors.append(
      f"train.num_samples={t.num_samples}: beam search returns at most train.sample_num_beams="
      f"{t.sample_num_beams} samples; raise sample_num_beams or lower num_samples"
    )
  if not isinstance(t.init_from, str):
    errors.append(f"train.init_from={t.init_from!r}: use '' or 'run:DIR', 'run:DIR@STEP', 'hf:DIR'")
  else:
    errors.extend(_init_from_problems(t.init_from))
  if t.branch_from:
    try:
      parse_branch_from(t.branch_from)
    except ValueError as e:
      errors.append(str(e))
    if t.init_from:
      errors.append(
        f"train.branch_from={t.branch_from!r}: exclusive with train.init_from="
        f"{t.init_from!r} (a branch takes the whole state, init_from only parameters); "
        "clear one of them"
      )
  if t.peak_tflops < 0:
    errors.append(f"train.peak_tflops={t.peak_tflops!r}: must be >= 0 (0 = automatic)")

  _choice(errors, "train.objective", t.objective, OBJECTIVES)
  errors.extend(_distill_problems(c))
  f = c.finetune
  if not isinstance(f.lm_weight, (int, float)) or f.lm_weight < 0:
    errors.append(f"finetune.lm_weight={f.lm_weight!r}: must be a number >= 0 (GPT-1 uses 0.5)")
  if not isinstance(f.num_classes, int) or isinstance(f.num_classes, bool) or f.num_classes < 2:
    errors.append(f"finetune.num_classes={f.num_classes!r}: must be an integer >= 2")
  _positive(errors, "model.special_tokens", m.special_tokens, allow_zero=True)
  _positive(errors, "train.epochs", t.epochs, allow_zero=True)
  try:
    profile_steps(t.profile_steps)
  except ValueError as e:
    errors.append(str(e))
  if t.epochs and t.objective in ("lm", "distill"):
    errors.append(
      f"train.epochs={t.epochs!r}: only for task objectives; pretraining counts "
      "train.steps or train.tokens"
    )
  if t.objective in ("classify", "choice") and m.special_tokens != 3:
    errors.append(
      f"model.special_tokens={m.special_tokens!r}: train.objective={t.objective!r} "
      "needs 3 (start, delimiter, extract); set model.special_tokens=3"
    )

  if o.lr <= 0:
    errors.append(f"optim.lr={o.lr!r}: must be > 0")
  _positive(errors, "optim.warmup_steps", o.warmup_steps, allow_zero=True)
  _choice(errors, "optim.schedule", o.schedule, ("cosine", "linear", "wsd", "constant"))
  _choice(errors, "optim.decay_shape", o.decay_shape, ("linear", "1-sqrt"))
  if not 0.0 <= o.decay_fraction <= 1.0:
    errors.append(f"optim.decay_fraction={o.decay_fraction!r}: must be in [0, 1]")
  for name in ("warmup_tokens", "decay_tokens"):
    if not isinstance(o[name], (int, float)) or o[name] < 0:
      errors.append(f"optim.{name}={o[name]!r}: must be a token count >= 0 (0 = off)")
  if not 0.0 <= o.min_lr_ratio <= 1.0:
    errors.append(f"optim.min_lr_ratio={o.min_lr_ratio!r}: must be in [0, 1]")
  for name in ("b1", "b2"):
    if not 0.0 <= o[name] < 1.0:
      errors.append(f"optim.{name}={o[name]!r}: must be in [0, 1)")
  if o.weight_decay < 0:
    errors.append(f"optim.weight_decay={o.weight_decay!r}: must be >= 0")
  if o.clip_norm < 0:
    errors.append(f"optim.clip_norm={o.clip_norm!r}: must be >= 0 (0 disables clipping)")

  for group in ("ici", "dcn"):
    shape = c.mesh[group]
    if set(shape.keys()) != set(MESH_AXES):
      errors.append(f"mesh.{group}={dict(shape)}: must name exactly the axes {MESH_AXES}")
      continue
    sizes = [shape[a] for a in MESH_AXES]
    if sum(s == -1 for s in sizes) > 1 or any(s == 0 or s < -1 for s in sizes):
      errors.append(f"mesh.{group}={dict(shape)}: sizes must be >= 1, with at most one -1")
  _positive(errors, "mesh.cpu_devices", c.mesh.cpu_devices, allow_zero=True)
  rule_names = {name for name, _ in c.mesh.rules}
  missing = {"batch", "length", "embed", "heads", "kv", "mlp", "vocab", "layers"} - rule_names
  if missing:
    errors.append(
      f"mesh.rules: no rule for logical axes {sorted(missing)}; add (name, None) to replicate"
    )

  _positive(errors, "eval.num_fewshot", c.eval.num_fewshot, allow_zero=True)
  if not isinstance(c.eval.tasks, str):
    errors.append(f"eval.tasks={c.eval.tasks!r}: use a string, e.g. 'perplexity,hellaswag=FILE'")
  if errors:
    raise ValueError("invalid config:\n  " + "\n  ".join(errors))


# An override value in scientific notation with a non-negative exponent: 3e11, 3.75E+8.
_SCIENTIFIC = re.compile(r"^[0-9]+(\.[0-9]+)?[eE]\+?[0-9]+$")


def whole_numbers(argv: list[str]) -> list[str]:
  """`argv` with each --config.* value written as 3e11 that is a whole number written as one
  (300000000000), so integer fields (train.tokens, optim.warmup_tokens) take the way token
  counts are written; a float field reads it the same either way."""
  out = []
  for arg in argv:
    name, eq, value = arg.partition("=")
    if name.startswith("--config.") and eq and _SCIENTIFIC.match(value):
      number = decimal.Decimal(value)
      if number == number.to_integral_value():
        arg = f"{name}={int(number)}"
    out.append(arg)
  return out
