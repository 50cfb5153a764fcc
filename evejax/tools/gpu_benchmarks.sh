#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md in one run that fits a 15-minute device lease
# (about 9 minutes of commands; each has its own `timeout`):
#
#   train_xla     bench_train, Qwen2.5-VL-3B shape, bf16, 2048 tokens, attention xla
#   train_cudnn   the same with attention cudnn (cuDNN flash attention)
#   sampler       bench_sampler --roofline --compare_scan (3B shape, bf16, batch 64)
#   sandbox       bench_sandbox with one worker per CPU core
#
#   bash evejax/tools/gpu_benchmarks.sh             # run all four
#   bash evejax/tools/gpu_benchmarks.sh --dry_run   # print the commands only
#   bash evejax/tools/gpu_benchmarks.sh --only train_cudnn   # one of them
#
# Each benchmark's output goes to $OUT/<name>.log when OUT is set (else
# ./gpu_benchmarks/), with env.txt (GPU, driver, jax), gpu_target_config.txtpb
# (this GPU described for compiling without it: `aot_compile --target gpu:h100x8
# --gpu_target_config FILE`) and summary.txt (exit status and seconds per
# benchmark; 124 = hit its timeout). Run from the
# repository root. The device image lacks ml_collections (bench_train) and
# imagehash with PyWavelets (bench_sandbox); carry them as wheels in .whl/,
# fetched where pip works (see /work/.library/device/README.md):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl \
#     ml_collections==1.1.0 ImageHash==4.3.2 PyWavelets==1.9.0
# and this script installs them into /tmp/site before the benchmarks.
set -u -o pipefail

DRY_RUN=0
ONLY=""
while (($#)); do
  case "$1" in
    --dry_run) DRY_RUN=1 ;;
    --only) ONLY="${2:?--only needs a benchmark name}"; shift ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) echo "gpu_benchmarks.sh: unknown argument $1 (use --dry_run, --only NAME)" >&2
       exit 2 ;;
  esac
  shift
done

PYTHON="${PYTHON:-python3}"
OUT_DIR="${OUT:-gpu_benchmarks}"
CORES="$(nproc 2>/dev/null || echo 16)"
export PYTHONUNBUFFERED=1

# name|seconds|command: the limits sum to 540 s.
BENCHMARKS=(
  "train_xla|150|$PYTHON -m evejax.tools.bench_train --preset qwen2_5_vl_3b --seq 2048 --batch 8 --images 1 --dtype bfloat16 --param_dtype bfloat16 --steps 5 --warmup 2 --attention xla"
  "train_cudnn|150|$PYTHON -m evejax.tools.bench_train --preset qwen2_5_vl_3b --seq 2048 --batch 8 --images 1 --dtype bfloat16 --param_dtype bfloat16 --steps 5 --warmup 2 --attention cudnn"
  "sampler|150|$PYTHON -m evejax.tools.bench_sampler --roofline --compare_scan --preset qwen2_5_vl_3b --batch 64"
  "sandbox|90|$PYTHON -m evejax.tools.bench_sandbox --workers $CORES --programs 96 --repeats 3 --markdown"
)

if [[ -n "$ONLY" ]] && ! printf '%s\n' "${BENCHMARKS[@]}" | grep -q "^$ONLY|"; then
  echo "gpu_benchmarks.sh: no benchmark $ONLY (train_xla, train_cudnn, sampler, sandbox)" >&2
  exit 2
fi

WHEELS=""
if [[ -d .whl ]] && compgen -G ".whl/*.whl" >/dev/null; then
  WHEELS="timeout 120 $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl"
fi

if ((DRY_RUN)); then
  [[ -n "$WHEELS" ]] && echo "$WHEELS"
  for entry in "${BENCHMARKS[@]}"; do
    IFS='|' read -r name limit cmd <<<"$entry"
    [[ -z "$ONLY" || "$ONLY" == "$name" ]] && echo "timeout $limit $cmd"
  done
  exit 0
fi

mkdir -p "$OUT_DIR"
if [[ -n "$WHEELS" ]]; then
  $WHEELS && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  $PYTHON -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1
  git rev-parse --short HEAD 2>/dev/null || echo "commit: unknown (no .git)"
  # This GPU as a target config, for `aot_compile --target gpu:... --gpu_target_config`.
  timeout 60 $PYTHON -m evejax.tools.gpu_target_config --out "$OUT_DIR/gpu_target_config.txtpb" 2>&1
} >"$OUT_DIR/env.txt"
cat "$OUT_DIR/env.txt"

: >"$OUT_DIR/summary.txt"
for entry in "${BENCHMARKS[@]}"; do
  IFS='|' read -r name limit cmd <<<"$entry"
  [[ -n "$ONLY" && "$ONLY" != "$name" ]] && continue
  echo "== $name: timeout $limit $cmd"
  start=$SECONDS
  # shellcheck disable=SC2086  # the command is a word list on purpose
  timeout "$limit" $cmd 2>&1 | tee "$OUT_DIR/$name.log"
  rc=$?
  echo "$name rc=$rc seconds=$((SECONDS - start))" | tee -a "$OUT_DIR/summary.txt"
done
