#!/usr/bin/env bash
# The checks to run once on a machine with a CUDA GPU (none is available to this project's CI):
# the CUDA tests, a training run interrupted and resumed on CUDA from the command line, and one
# chapter in full mode. Run from the repository root after `./run.sh book` has set up .venv:
#
#   scripts/gpu_check.sh [book/gaussian_vae.md]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
echo "== CUDA tests"
python -m pytest tests/test_cuda.py -q -rs
echo "== the unit tests (CPU tensors; models move to the GPU where a test asks for 'auto')"
python -m pytest tests -q --ignore=tests/browser -x
echo "== a run stopped after one minute and resumed on CUDA"
out=$(mktemp -d)/run
timeout -s INT 60 vaetut train vae --epochs 20 --out "$out" --device cuda || true
vaetut train vae --resume --out "$out" --device cuda
vaetut evaluate "$out" --k 1000 --n-test 500 --device cuda
echo "== one chapter in full mode"
python scripts/execute_chapters.py "${1:-book/gaussian_vae.md}"
