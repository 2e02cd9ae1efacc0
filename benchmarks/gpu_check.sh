#!/usr/bin/env bash
# One-shot check of natix's CUDA extraction path on a fresh GPU machine, run from anywhere:
#
#     OUT=/path/to/results bash benchmarks/gpu_check.sh [extra extract_gpu.py options]
#
# No internet is assumed: torch, transformers and natix's other dependencies must already be
# installed, or installable from the machine's own package index. Steps, each timestamped:
#   1. a virtual environment that sees the system's packages ($NATIX_VENV, default under $TMPDIR),
#      `pip install -e . --no-deps` (with dependencies from the local index only if that fails;
#      PYTHONPATH=src if pip cannot install at all), the versions found, and an import check;
#   2. the CPU smoke test (tests/benchmarks/test_extract_gpu_script.py with pytest, or the smoke
#      run of benchmarks/extract_gpu.py without it; about 20 s);
#   3. the CUDA run with the defaults (ViT-L/16, 4096 1080p JPEGs): its table on stdout, every
#      number in $OUT/extract_gpu.json (rewritten after each step, so a run cut short by
#      GPU_TIMEOUT, 480 s by default, still returns what it measured), its log in $OUT.
set -euo pipefail

say() { printf '[%s] %s\n' "$(date '+%H:%M:%S')" "$*"; }

: "${OUT:?set OUT to the folder whose files come back}"
mkdir -p "$OUT"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

say "natix GPU check in $PWD ($(git rev-parse --short HEAD 2>/dev/null || echo 'no git')), results in $OUT"
say "machine: $(uname -srm), $(nproc) CPUs, $(df -h "${TMPDIR:-/tmp}" | awk 'NR==2 {print $4}') free in ${TMPDIR:-/tmp}"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader || say "nvidia-smi failed"

SYSPY=${PYTHON:-python3}
VENV=${NATIX_VENV:-${TMPDIR:-/tmp}/natix-gpu-venv}
if [ -x "$VENV/bin/python" ] || "$SYSPY" -m venv --system-site-packages "$VENV"; then
  PY="$VENV/bin/python"
  say "python: $("$PY" --version 2>&1) in the virtual environment $VENV (system packages visible)"
else
  PY="$SYSPY"
  say "python: $("$PY" --version 2>&1) ($(command -v "$PY"); no virtual environment could be made)"
fi
# Without dependencies first (the machine's own packages), with the build tools found here, then
# from the local index; the last resort needs no install at all.
installed=""
for how in "--no-deps --no-build-isolation" "--no-deps" ""; do
  # shellcheck disable=SC2086 # $how is a list of options
  if "$PY" -m pip install -q -e . $how; then
    installed="pip install -e . $how"
    break
  fi
  say "pip install -e . $how failed"
done
if [ -n "$installed" ]; then
  say "installed natix: $installed"
else
  say "pip could not install natix: using PYTHONPATH=src"
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi

say "versions found:"
"$PY" - <<'EOF'
import importlib.metadata as md

for name in ("natix", "torch", "torchvision", "triton", "transformers", "timm", "peft", "safetensors", "h5py",
             "numpy", "scipy", "scikit-learn", "xgboost", "pillow", "click", "tqdm", "pyyaml", "matplotlib", "pytest"):
    try:
        print(f"  {name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name} MISSING")
import torch

gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible"
print(f"  torch CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, GPU: {gpu}")
EOF
# Fail here, in one line, rather than minutes into the run.
"$PY" -c "import natix.extract.extractor, natix.cache.store, transformers, torchvision, h5py, PIL" \
  || { say "natix or a dependency does not import: install the packages listed MISSING above"; exit 1; }

say "CPU smoke test"
if "$PY" -c "import pytest" 2>/dev/null; then
  timeout 300 "$PY" -m pytest -q -x -p no:cacheprovider tests/benchmarks/test_extract_gpu_script.py 2>&1 \
    | tee "$OUT/extract_cpu_smoke.log"
else
  timeout 300 "$PY" benchmarks/extract_gpu.py --device cpu --arch tiny --images 8 --workers 2 \
    --json-out "$OUT/extract_cpu_smoke.json" 2>&1 | tee "$OUT/extract_cpu_smoke.log"
fi

say "CUDA run (GPU_TIMEOUT=${GPU_TIMEOUT:-480} s)"
timeout "${GPU_TIMEOUT:-480}" "$PY" benchmarks/extract_gpu.py --device cuda --json-out "$OUT/extract_gpu.json" "$@" 2>&1 \
  | tee "$OUT/extract_gpu.log"
say "done: $OUT/extract_gpu.json"
