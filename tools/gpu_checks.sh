#!/usr/bin/env bash
# One-shot checks on a machine with a CUDA GPU (CI has none): the environment, the GPU-marked tests, forward
# throughput against a hand-written torch CaffeNet, and the initialization of issue #5 (1,024 images) against
# hand-written references. Works offline: nothing is installed, caffeinit runs from this checkout (PYTHONPATH).
# The corpus and conformance tests need shared/ inside the checkout (a copy of ../shared) where ../shared is absent.
# Logs: ${OUT:-/tmp/gpu_out}/{env,gpu_tests,forward_cuda,memory_cuda,init_cuda}.log and summary.txt. Bounded to GPU_CHECKS_BUDGET
# seconds (default 420) in all; every step has its own limit too. Name steps to run only those (a rerun):
#   bash tools/gpu_checks.sh [env] [tests] [forward] [memory] [init]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
deadline=$(( $(date +%s) + ${GPU_CHECKS_BUDGET:-420} ))
steps=" ${*:-env tests forward memory init} "
results=()

# step NAME LIMIT LOG COMMAND...: run COMMAND under min(LIMIT, time left), output to the terminal and LOG (new).
step() {
  local name=$1 limit=$2 log=$3
  shift 3
  local left=$(( deadline - $(date +%s) ))
  (( limit > left )) && limit=$left
  if (( limit < 15 )); then
    results+=("$name: SKIPPED (budget spent)")
    return
  fi
  echo "== $name (limit ${limit} s) ==" | tee "$log"
  local t0 rc verdict
  t0=$(date +%s)
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) verdict=ok ;;
    124|137) verdict="TIMED OUT" ;;
    *) verdict="FAILED" ;;
  esac
  results+=("$name: $verdict (exit $rc, $(( $(date +%s) - t0 )) s)")
}

env_report() {
  if command -v nvidia-smi >/dev/null; then nvidia-smi -L; else echo "nvidia-smi: not on PATH"; fi
  uptime
  python3 - <<'PY'
import importlib, os, platform, sys

import torch
print(f"python {platform.python_version()} ({sys.executable}), {os.cpu_count()} CPUs")
print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, cuDNN {torch.backends.cudnn.version()}")
precision = lambda: (f"conv {getattr(torch.backends.cudnn.conv, 'fp32_precision', '?')}, "  # noqa: E731
                     f"matmul {getattr(torch.backends.cuda.matmul, 'fp32_precision', '?')}")
print(f"torch's own fp32 precision defaults: {precision()}")
for name in ("numpy", "google.protobuf", "onnx", "onnxruntime", "cv2", "h5py", "tqdm", "lmdb"):
    try:
        print(f"{name} {importlib.import_module(name).__version__}")
    except ImportError as e:
        print(f"{name}: missing ({e})")
import onnxruntime
print(f"onnxruntime providers: {', '.join(onnxruntime.get_available_providers())}")
import caffeinit
from caffeinit.api import load  # noqa: F401  (the whole public API imports)
print(f"caffeinit {caffeinit.__version__} imports from {os.path.dirname(caffeinit.__file__)}")
shared = "../shared" if os.path.isdir("../shared") else "shared"
print(f"shared data: {shared} ({'present' if os.path.isdir(os.path.join(shared, 'conformance')) else 'MISSING'})")
if torch.cuda.is_available():
    import torch.nn.functional as F
    from caffeinit.device import select_device
    device = select_device("cuda")
    print(f"device: {torch.cuda.get_device_name(device)}; after select_device: {precision()}")
    x = torch.randn(4, 256, 28, 28, generator=torch.Generator().manual_seed(0))
    w = torch.randn(64, 256, 3, 3, generator=torch.Generator().manual_seed(1))
    ref = F.conv2d(x.double(), w.double(), stride=2, padding=1)
    for mode in ("ieee", "tf32"):  # how far TF32 would move a conv: the GPU tests' 1e-5 must separate the two
        select_device("cuda", mode)
        got = F.conv2d(x.to(device), w.to(device), stride=2, padding=1).double().cpu()
        print(f"conv 256x3x3 {mode}: max rel err vs float64 {float((got - ref).abs().max() / ref.abs().max()):.2e}")
    select_device("cuda", "ieee")
else:
    sys.exit("CUDA is not available: the GPU tests will skip and the benchmarks do nothing")
PY
}

export -f env_report
[[ $steps == *" env "* ]] && step "environment" 60 "$out/env.log" bash -c env_report

# Only the files holding GPU-marked tests: collecting the whole tests/ imports modules needing packages this
# machine may lack (lmdb).
# 4 workers of 4 CPU threads: the tests' CPU references (every corpus net) dominate.
mapfile -t gpu_test_files < <(grep -rl --include='test_*.py' 'mark\.gpu' tests | sort)
[[ $steps == *" tests "* ]] && step "GPU tests (${gpu_test_files[*]})" 150 "$out/gpu_tests.log" \
  env OMP_NUM_THREADS=4 python3 -m pytest -q -m gpu -n 4 -p no:cacheprovider -p no:benchmark -rfEs --durations=12 \
  "${gpu_test_files[@]}"

[[ $steps == *" forward "* ]] && step "forward throughput" 90 "$out/forward_cuda.log" bash -c \
  'python3 benchmarks/forward.py --device cuda --batch 16 &&
   python3 benchmarks/forward.py --device cuda --batch 64 --nets caffenet,vgg16'

[[ $steps == *" memory "* ]] && step "memory: frontier vs every blob (issue #3)" 60 "$out/memory_cuda.log" \
  python3 benchmarks/memory.py --device cuda --net vgg16 --batch 256

[[ $steps == *" init "* ]] && step "init vs hand-written (issue #5)" 210 "$out/init_cuda.log" \
  python3 benchmarks/init.py --device cuda --net caffenet,vgg16 --images 1024 --batch 64 --child-timeout 100

{
  echo "== summary ($(date -u +%FT%TZ)) =="
  grep -m1 '^device:' "$out/env.log" 2>/dev/null
  grep 'max rel err vs float64' "$out/env.log" 2>/dev/null
  printf '%s\n' "${results[@]}"
  echo "-- GPU tests:"
  grep -E '^(FAILED|ERROR) |^[0-9]+ (passed|failed|skipped|errors?)' "$out/gpu_tests.log" 2>/dev/null | tail -25
  echo "-- forward (images/s):"
  grep -E '^(device:|\| )' "$out/forward_cuda.log" 2>/dev/null
  echo "-- memory (issue #3):"
  grep -E '^(vgg16|\| )' "$out/memory_cuda.log" 2>/dev/null
  echo "-- init (issue #5):"
  if grep -q '^| net | method |' "$out/init_cuda.log" 2>/dev/null; then
    sed -n '/^| net | method |/,$p' "$out/init_cuda.log"
  else
    grep '^| ' "$out/init_cuda.log" 2>/dev/null  # the rows finished before the step was stopped
  fi
  grep -E 'failed|stopped' "$out/init_cuda.log" 2>/dev/null
  true
} | tee "$out/summary.txt"
# exit status: 0 only if every step that ran succeeded
for line in "${results[@]}"; do
  [[ $line == *": ok "* ]] || exit 1
done
