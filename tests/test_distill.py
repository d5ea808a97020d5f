"""Distillation: the KL against NumPy, its limits (alpha = 0, a student equal to its
teacher), the teacher's place in the step (shardings, not checkpointed), resume, and
the refusal of a teacher with another tokenizer."""

import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import gptjax
from gptjax import config as config_lib
from gptjax import distill, objectives, sharding, train
from gptjax.data.tokenizer import ByteTokenizer, HFTokenizer
from gptjax.model import GPT, model_config

# Byte-tokenized tiny models: no tokenizer training. The student's model vocabulary is
# padded past the tokenizer's 257 ids (as TINY in test_train.py pads past 512), so the
# padded logits exist and must stay out of the KL.
STUDENT = {
  "model.n_layer": 1,
  "model.d_model": 32,
  "model.n_head": 2,
  "model.d_ff": 64,
  "model.seq_len": 32,
  "model.vocab_size": 300,
  "data.tokenizer": "bytes",
  "data.eval_sequences": 8,
  "train.batch_size": 8,
  "train.log_every": 1,
  "train.num_samples": 0,
  "optim.warmup_steps": 2,
}
TEACHER = {**STUDENT, "model.n_layer": 2, "model.d_model": 48, "model.d_ff": 96}


def with_overrides(base, **overrides):
  return config_lib.override(config_lib.base_config(), {**base, **overrides})


def numpy_kl(student, teacher, temperature, direction):
  """KL per position and its gradient with respect to the student's logits, in float64."""

  def log_softmax(z):
    z = z / temperature
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))

  log_q, log_p = log_softmax(student.astype(np.float64)), log_softmax(teacher.astype(np.float64))
  q, p = np.exp(log_q), np.exp(log_p)
  if direction == "forward":  # KL(p || q); d/ds = (q - p) / T
    return (p * (log_p - log_q)).sum(-1), (q - p) / temperature
  kl = (q * (log_q - log_p)).sum(-1)  # KL(q || p); d/ds_j = q_j (log q_j - log p_j - KL) / T
  return kl, q * (log_q - log_p - kl[..., None]) / temperature


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kl_and_its_gradient_match_numpy_and_ignore_padded_rows(temperature, direction):
  used, padded = 11, 5
  rng = np.random.default_rng(int(temperature) * 7 + len(direction))
  student = rng.normal(0, 3, (2, 3, used + padded)).astype(np.float32)
  teacher = rng.normal(0, 3, (2, 3, used + padded)).astype(np.float32)
  teacher[..., used:] = 50.0  # would dominate both softmaxes if the padded rows took part

  def total(s):
    return objectives.kl_divergence(s, jnp.asarray(teacher), temperature, direction, used).sum()

  kl = objectives.kl_divergence(
    jnp.asarray(student), jnp.asarray(teacher), temperature, direction, used
  )
  grad = jax.grad(total)(jnp.asarray(student))
  expected_kl, expected_grad = numpy_kl(
    student[..., :used], teacher[..., :used], temperature, direction
  )
  np.testing.assert_allclose(kl, expected_kl, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad[..., :used], expected_grad, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(grad[..., used:], 0.0)
  assert float(kl.min()) > 0


def tiny_distill(model, teacher, alpha=0.5, temperature=2.0, direction="forward"):
  return objectives.make(
    "distill",
    model,
    distill=objectives.Distill(teacher, temperature, alpha, direction, ByteTokenizer.vocab_size),
  )


@pytest.mark.slow
def test_a_student_equal_to_its_teacher_has_zero_kl_and_zero_soft_gradient():
  c = with_overrides(STUDENT)
  model = GPT(model_config(c.model))
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 32), jnp.int32))["params"]
  tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 33), 0, ByteTokenizer.vocab_size)
  objective = tiny_distill(model, model)

  def term(name):
    return jax.value_and_grad(
      lambda student: objective.loss(student, {"tokens": tokens}, None, params)[0][name]
    )

  (kl, kl_grads), (lm, lm_grads) = jax.jit(lambda p: (term("kl")(p), term("lm")(p)))(params)
  assert float(kl) == pytest.approx(0.0, abs=1e-5 * tokens.size)
  largest = lambda grads: max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads))
  # Zero up to float32 rounding: a millionth of the cross-entropy's gradient.
  assert largest(kl_grads) < 1e-6 * largest(lm_grads)
  assert float(lm) > 0


def teacher_params(config, shardings=None):
  """Random parameters of the teacher `config` names, laid out by `shardings`."""
  model = GPT(model_config(distill.model_config(config)))
  init = lambda r: nn.unbox(model.init(r, jnp.zeros((1, model.config.seq_len), jnp.int32)))[
    "params"
  ]
  return jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(5))


def write_teacher_config(directory, overrides) -> str:
  """A teacher directory holding only config.json: all `train.build` reads."""
  os.makedirs(directory, exist_ok=True)
  config = with_overrides(overrides)
  (directory / "config.json").write_text(config.to_json_best_effort())
  return f"run:{directory}"


def configs(tmp_path, mesh_shape=(8, 1, 1), **distill_settings):
  """The lm and distill configs of the same student on a mesh, with a teacher directory."""
  teacher = write_teacher_config(tmp_path / "teacher", TEACHER)
  mesh_axes = dict(zip(config_lib.MESH_AXES, mesh_shape))
  lm = with_overrides(STUDENT, **{f"mesh.ici.{k}": v for k, v in mesh_axes.items()})
  dist = config_lib.override(
    lm,
    {
      "train.objective": "distill",
      "distill.teacher": teacher,
      **{f"distill.{k}": v for k, v in distill_settings.items()},
    },
  )
  config_lib.validate(dist)
  return lm, dist


def build(config):
  mesh = sharding.make_mesh(config.mesh)
  return train.build(config, mesh, ByteTokenizer.eos_id, ByteTokenizer.vocab_size)


@pytest.mark.slow
def test_alpha_zero_is_bit_identical_to_lm(tmp_path):
  """Two steps with dropout: the same parameters and losses, bit for bit."""
  configured = configs(tmp_path, alpha=0.0, temperature=2.0)
  lm, dist = (build(config_lib.override(c, {"model.dropout": 0.1})) for c in configured)
  teacher = teacher_params(configured[1], dist.teacher_shardings)
  batches = jax.random.randint(jax.random.PRNGKey(2), (2, 8, 33), 0, ByteTokenizer.vocab_size)
  finals = []
  for program, extra in ((lm, ()), (dist, (teacher,))):
    state, window = program.init(0), train.Window.zeros()
    for batch in batches:
      batch = {"tokens": jax.device_put(batch, program.batch_shardings["tokens"])}
      state, window = program.train_step(state, window, batch, *extra)
    finals.append(jax.device_get((state.params, window.loss_sum)))
  for a, b in zip(jax.tree.leaves(finals[0]), jax.tree.leaves(finals[1])):
    np.testing.assert_array_equal(a, b)
  assert all(not leaf.is_deleted() for leaf in jax.tree.leaves(teacher))  # never donated


def test_teacher_shardings_follow_the_rules_and_stay_out_of_the_state(tmp_path):
  config = configs(tmp_path, mesh_shape=(2, 2, 2))[1]
  dist = build(config)
  specs = jax.tree.map(lambda s: s.spec, dist.teacher_shardings)
  # embed -> fsdp, vocab and mlp -> tensor, layers -> replicated (config.py's rules).
  assert specs["wte"] == P("tensor", "fsdp")
  assert specs["blocks"]["mlp"]["fc_kernel"] == P(None, "fsdp", "tensor")
  assert specs["blocks"]["mlp"]["proj_kernel"] == P(None, "tensor", "fsdp")
  # The teacher (d_model 48) is an input of the step; the state the step returns and
  # checkpoints is the student's (d_model 32) alone: parameters, Adam moments, step, rng.
  teacher = jax.eval_shape(functools.partial(teacher_params, config))
  assert jax.tree.structure(teacher) == jax.tree.structure(dist.teacher_shardings)
  assert any(48 in leaf.shape for leaf in jax.tree.leaves(teacher))
  assert not any(48 in leaf.shape for leaf in jax.tree.leaves(dist.abstract_state))


def test_distill_settings_are_validated():
  c = with_overrides(
    STUDENT,
    **{
      "train.objective": "distill",
      "distill.temperature": 0.0,
      "distill.alpha": 1.5,
      "distill.kl": "both",
      "distill.teacher_dtype": "int8",
    },
  )
  with pytest.raises(ValueError) as e:
    config_lib.validate(c)
  message = str(e.value)
  for expected in (
    "distill.teacher='': train.objective='distill' needs a teacher",
    "distill.temperature=0.0: must be a number > 0",
    "distill.alpha=1.5: must be in [0, 1]",
    "distill.kl='both': unknown value",
    "distill.teacher_dtype='int8': unknown value",
  ):
    assert expected in message
  with pytest.raises(ValueError, match=r"distill.teacher='run:/x': only read by"):
    config_lib.validate(with_overrides(STUDENT, **{"distill.teacher": "run:/x"}))


def test_a_teacher_with_another_tokenizer_is_refused(tmp_path):
  spec = write_teacher_config(tmp_path / "teacher", TEACHER)
  ByteTokenizer().save(str(tmp_path / "teacher" / "tokenizer"))
  c = with_overrides(STUDENT, **{"train.objective": "distill", "distill.teacher": spec})
  distill.check_tokenizer(c, ByteTokenizer())  # the same tokenizer passes
  other = HFTokenizer(word_level_json(["a", "b", "<|endoftext|>"]))
  with pytest.raises(ValueError) as e:
    distill.check_tokenizer(c, other)
  assert str(e.value) == (
    f"distill.teacher={spec!r}: the teacher's tokenizer (bytes-v1, 257 ids) is not this "
    f"run's (data.tokenizer='bytes': {other.fingerprint()}, 3 ids); train the student "
    "with the teacher's tokenizer and data.* settings"
  )


def word_level_json(words):
  import tokenizers

  model = tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="a")
  tok = tokenizers.Tokenizer(model)
  tok.add_special_tokens(["<|endoftext|>"])
  return tok.to_str()


# ---- whole runs (slow): a teacher trained here, students distilled from it ----------


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("distill") / "teacher")
  train.run(with_overrides(TEACHER, **{"train.steps": 4}), workdir)
  return workdir


def student_config(teacher_dir, **overrides):
  return with_overrides(
    STUDENT,
    **{
      "train.objective": "distill",
      "distill.teacher": f"run:{teacher_dir}",
      "distill.temperature": 2.0,
      "model.dropout": 0.1,  # the teacher must run without it, the student with it
      "train.checkpoint_every": 100,
      "train.eval_every": 0,
      "train.extend": True,
      "optim.warmup_steps": 0,
      "optim.min_lr_ratio": 1.0,  # a constant lr: 2 steps then 2 more is the same schedule
      **overrides,
    },
  )


def train_rows(workdir):
  return [json.loads(line) for line in open(f"{workdir}/metrics.jsonl") if "train_loss" in line]


@pytest.mark.slow
def test_a_resumed_distillation_equals_an_uninterrupted_one(teacher_run, tmp_path):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  summary = train.run(student_config(teacher_run, **{"train.steps": 4}), straight)
  train.run(student_config(teacher_run, **{"train.steps": 2}), resumed)
  train.run(student_config(teacher_run, **{"train.steps": 4}), resumed)
  losses = [[r["train_loss"] for r in train_rows(d)] for d in (straight, resumed)]
  assert losses[0] == losses[1] and len(losses[0]) == 4
  final = [jax.device_get(gptjax.load(d).params) for d in (straight, resumed)]
  for a, b in zip(jax.tree.leaves(final[0]), jax.tree.leaves(final[1])):
    np.testing.assert_array_equal(a, b)
  assert summary["teacher"] == f"run:{os.path.abspath(teacher_run)}@4"
  # The teacher's forward FLOPs, counted from its real parameter tree: 2 per weight of each
  # kernel and the (tied) output embedding, plus causal attention at the student's length.
  teacher = gptjax.load(teacher_run)
  matmul = sum(
    leaf.size
    for path, leaf in jax.tree_util.tree_leaves_with_path(teacher.params)
    if jax.tree_util.keystr(path).endswith(("kernel']", "['wte']"))
  )
  forward = 2 * matmul + 2 * 2 * 48 * STUDENT["model.seq_len"]
  row = train_rows(straight)[-1]
  assert row["teacher_flops"] == row["tokens"] * forward
  assert row["mfu_with_teacher"] > row["mfu"] > 0


@pytest.mark.slow
def test_a_student_with_another_tokenizer_is_refused_before_it_writes(teacher_run, tmp_path):
  path = tmp_path / "tokenizer.json"
  path.write_text(word_level_json([chr(i) for i in range(32, 127)] + ["\n", "<|endoftext|>"]))
  workdir = tmp_path / "student"
  c = student_config(teacher_run, **{"train.steps": 2, "data.tokenizer": f"hf:{path}"})
  with pytest.raises(ValueError, match=r"the teacher's tokenizer \(bytes-v1, 257 ids\) is not"):
    train.run(c, str(workdir))
  assert not workdir.exists() or not any(workdir.iterdir())


# ---- the report on a fabricated distillation sweep ----------------------------------


def write_run(path, n, loss, teacher="", evals=((4, None),)):
  """A completed run directory (summary.json, metrics.jsonl) of N params on 1,024 tokens."""
  os.makedirs(path)
  rows = [
    {
      "step": step,
      "tokens": 256 * step,
      "flops": 6 * n * 256 * step,
      "eval_loss": value,
      "eval_loss_sem": 0.01,
    }
    for step, value in ((s, loss if v is None else v) for s, v in evals)
  ]
  (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  summary = {
    "n_params": n + 1000, "n_params_non_embedding": n, "n_layer": 1, "d_model": 32,
    "tokens": 1024, "flops": 6 * n * 1024, "final_train_loss": loss, "final_eval_loss": loss,
    "wall_s": 1.0, "status": "completed", "teacher": teacher,
  }  # fmt: skip
  (path / "summary.json").write_text(json.dumps(summary))


PARTS = [(doc, row) for doc in range(4) for row in range(2)]  # 4 documents, 2 parts of 16 tokens
SCRATCH_SUMS = [48.0, 47.5, 49.0, 48.2, 46.9, 47.7, 48.8, 48.1]  # 3.0 nats/token on average
DISTILLED_SUMS = [x - 1.6 + 0.05 * (i % 3) for i, x in enumerate(SCRATCH_SUMS)]  # ~2.9


def write_parts(path, step, sums):
  """The per-part eval losses training writes (eval/STEP/lm_losses_K.jsonl)."""
  os.makedirs(path / "eval" / str(step))
  (path / "eval" / str(step) / "lm_losses_8.jsonl").write_text(
    "".join(
      json.dumps({"row": row, "document": doc, "loss_sum": y, "tokens": 16}) + "\n"
      for (doc, row), y in zip(PARTS, sums)
    )
  )


@pytest.mark.slow
def test_the_report_sets_distilled_students_beside_scratch_and_fits_scratch_alone(tmp_path):
  teacher_dir = tmp_path / "teacher"
  write_run(teacher_dir, 10**6, 2.0, evals=((2, 2.1), (4, 2.0)))
  spec = f"run:{teacher_dir}@2"  # the students read step 2: its eval loss is 2.1
  root = tmp_path / "sweep"
  scratch = {1000: 3.0, 2000: 2.8, 4000: 2.65, 8000: 2.55}
  members = {f"n{n}": (n, loss, "") for n, loss in scratch.items()}
  members |= {"n1000-distilled": (1000, 2.9, spec), "n2000-distilled": (2000, 2.81, spec)}
  for name, (n, loss, teacher) in members.items():
    write_run(root / name, n, loss, teacher)
  for name, sums in (("n1000", SCRATCH_SUMS), ("n1000-distilled", DISTILLED_SUMS)):
    write_parts(root / name, 4, sums)
  (root / "sweep.json").write_text(json.dumps({name: {} for name in members}))
  from gptjax import report

  paths = report.run_render(report.parser().parse_args(["render", str(root), "--bootstrap", "20"]))
  fits = json.loads(open(paths["fits"]).read())
  assert [(d["n"], d["teacher_loss"], d["scratch_loss"], d["distilled_loss"]) for d in
          fits["distillation"]] == [(1000, 2.1, 3.0, 2.9), (2000, 2.1, 2.8, 2.81)]  # fmt: skip
  assert fits["distillation"][0]["gain"] == pytest.approx(0.1)
  # n1000's two runs wrote per-document losses: its error is the paired, clustered one.
  assert fits["distillation"][0]["gain_se_paired"]
  diff = {doc: 0.0 for doc in range(4)}
  for (doc, _), a, b in zip(PARTS, SCRATCH_SUMS, DISTILLED_SUMS):
    diff[doc] += a - b
  d, t = np.array(list(diff.values())), np.full(4, 2 * 16.0)
  gain = d.sum() / t.sum()
  se = np.sqrt(4 / 3 * np.sum((d - gain * t) ** 2)) / t.sum()  # Cochran's clustered ratio
  assert fits["distillation"][0]["gain_se"] == pytest.approx(se)
  assert se < 0.01 * np.sqrt(2) / 3  # far below the independent errors' 0.0141
  # n2000's did not: its error treats the two evals as independent, and says so.
  assert not fits["distillation"][1]["gain_se_paired"]
  assert fits["distillation"][1]["gain_se"] == pytest.approx(0.01 * np.sqrt(2))
  assert "-0.0100 ± 0.0141*" in open(paths["md"]).read()
  assert "loss_vs_n" in fits  # four scratch sizes, one each: the distilled twins stay out
  markdown = open(paths["md"]).read()
  assert "## Distillation" in markdown and os.path.getsize(paths["distillation"]) > 0
  assert "beat scratch by more than 2 s.e. at 1 of 2 sizes" in markdown


@pytest.mark.slow
def test_a_bfloat16_teacher_loads_sharded_by_the_rules(teacher_run):
  config = distill.resolve(
    student_config(
      teacher_run, **{"distill.teacher_dtype": "bfloat16", "mesh.ici.data": 2, "mesh.ici.fsdp": 4}
    )
  )
  program = build(config)
  params = distill.load_params(config, program.teacher_shardings)
  source = jax.device_get(gptjax.load(teacher_run).params)
  for loaded, saved, sharding_ in zip(
    jax.tree.leaves(params), jax.tree.leaves(source), jax.tree.leaves(program.teacher_shardings)
  ):
    assert loaded.dtype == jnp.bfloat16 and loaded.sharding == sharding_
    np.testing.assert_array_equal(np.asarray(loaded), saved.astype(jnp.bfloat16))
