#!/usr/bin/env bash
# GPT-2 on one GPU through the real training loop: tok/s and MFU (against flops.py's bf16
# peak for the device) for GPT-2 small in bfloat16 with each attention path, then the largest
# GPT-2 that trains on the card with rematerialisation. Issue 18's GPU measurements.
#
#   bash benchmarks/gpu_gpt2.sh [OUTPUT_DIR] [extra --config.* overrides for every run]
#
# Every run trains on the offline embedded corpus with the bytes tokenizer (no downloads, no
# tokenizer training) and a model vocabulary of GPT-2's 50257 padded to 50304, so the step's
# FLOPs are GPT-2's own. Each run's log, metrics and summary land under OUTPUT_DIR/NAME; the
# script ends with one line per run: its median tok/s and MFU over the logged rows after the
# first (which holds the compile). Wheels the machine lacks can be installed first from
# ./.whl (see benchmarks/gpu_wheels.txt for the list and the command that fetches them).
#
# On a CPU it runs end to end with a tiny shape, which is how it is checked (the cudnn runs
# are refused there, each with its one-line reason):
#   bash benchmarks/gpu_gpt2.sh /tmp/gpu_smoke --config.model.n_layer=1 \
#     --config.model.d_model=64 --config.model.n_head=2 --config.model.d_ff=256 \
#     --config.model.seq_len=64 --config.train.batch_size=2
set -euo pipefail
out=${1:-/tmp/gptjax_gpu}
shift || true
mkdir -p "$out"
# The wheels are the device image's Python's (3.12; benchmarks/gpu_wheels.txt).
if compgen -G ".whl/*.whl" >/dev/null && python3 -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gptjax_site .whl/*.whl
  export PYTHONPATH="/tmp/gptjax_site:${PYTHONPATH:-}"
fi
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
steps=${GPU_STEPS:-30}

common=(
  --config.data.tokenizer=bytes
  --config.model.vocab_size=50257
  --config.model.pad_vocab_multiple=128
  --config.model.dtype=bfloat16
  "--config.train.steps=$steps"
  --config.train.log_every=5
  --config.train.eval_every=0
  "--config.train.checkpoint_every=$steps"
  --config.train.num_samples=0
  --config.data.eval_sequences=8
)

run() {  # NAME EXPERIMENT OVERRIDES...
  local name=$1 experiment=$2
  shift 2
  echo "== $name: $experiment $*"
  rm -rf "${out:?}/$name"
  if python3 -m gptjax.main "--config=experiments/$experiment.py" "--workdir=$out/$name" \
    "${common[@]}" "$@" "${extra[@]}" >"$out/$name.log" 2>&1; then
    grep -E "MFU divides|step .*/|completed" "$out/$name.log" | tail -4
  else
    echo "$name failed:"
    tail -15 "$out/$name.log"
  fi
}

extra=("$@")
# GPT-2 small, 32 sequences of 1024 per update: the three attention paths.
for impl in blocks cudnn xla; do
  run "small_$impl" gpt2_small --config.train.batch_size=32 "--config.model.attention_impl=$impl"
done
# The largest GPT-2 that fits: XL (1.5B) with every activation recomputed in the backward.
run xl_remat gpt2_xl --config.train.batch_size=16 --config.model.remat_policy=nothing_saveable \
  --config.model.attention_impl=cudnn

echo "== summary (median over logged rows after the first)"
python3 - "$out" <<'EOF'
import glob, json, os, statistics, sys
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*", "metrics.jsonl"))):
  rows = [json.loads(line) for line in open(path)]
  rows = [r for r in rows if "tokens_per_s" in r][1:]
  if not rows:
    print(f"{os.path.basename(os.path.dirname(path))}: no timed rows")
    continue
  tps = statistics.median(r["tokens_per_s"] for r in rows)
  mfu = [r["mfu"] for r in rows if r.get("mfu") is not None]
  mfu_text = f"{100 * statistics.median(mfu):.1f}%" if mfu else "n/a"
  print(f"{os.path.basename(os.path.dirname(path))}: {tps:,.0f} tok/s, MFU {mfu_text}, {len(rows)} rows")
EOF
