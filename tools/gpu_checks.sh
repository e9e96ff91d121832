#!/usr/bin/env bash
# One-shot checks for a machine with a CUDA GPU (run once when a session is lent one; CI has no GPU).
# Writes logs under ${OUT:-gpu_out}/. Needs ../shared beside the checkout for the corpus tests: copy it into
# shared/ inside the checkout first if the device machine only receives the repository.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_out}; mkdir -p "$out"
export PYTHONUNBUFFERED=1
bash tools/install.sh test > "$out/install.log" 2>&1 || { echo "install failed"; tail "$out/install.log"; exit 1; }
python3 -c "import torch; print(torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(0))" \
  | tee "$out/device.txt"
# 1. CPU vs CUDA on every corpus net (1e-5), the GPU-marked tests.
python3 -m pytest -q -m gpu tests 2>&1 | tee "$out/gpu_tests.log" | tail -3
# 2. Forward throughput in IEEE fp32 vs a hand-written torch CaffeNet.
timeout 300 python3 benchmarks/forward.py --device cuda --no-rss 2>&1 | tee "$out/forward_cuda.log" | tail -12
# 3. The initialization on the GPU (1,024 images, as the issue's goal states).
timeout 300 python3 benchmarks/init.py --device cuda --images 1024 --batch 64 2>&1 | tee "$out/init_cuda.log" | tail -12
