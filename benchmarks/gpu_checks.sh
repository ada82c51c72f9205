#!/usr/bin/env bash
# GPU checks on a lent CUDA machine (run from the repository root; writes under $OUT, default ./gpu_out):
# the CUDA tests, then benchmarks/solver_scale.py on the GPU. netCDF4/cftime wheels in .whl/ when the
# machine lacks them (Python 3.12 wheels: `pip download --only-binary=:all: --python-version 3.12 ...`).
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$OUT/device.txt"
python3 -c "import torch, particlescore; print(torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/device.txt"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_devices.py -k cuda -rs 2>&1 | tee "$OUT/cuda_tests.log"
timeout "${SCALE_SECONDS:-270}" python3 benchmarks/solver_scale.py --device cuda --problems maxwell_d3 bkw_d2 \
  --methods discoformer kde --min-log2 12 --max-log2 17 --time-box 20 --steps 2 --out-dir "$OUT/gpu" 2>&1 \
  | grep -v Warning | tee "$OUT/scale.log"
