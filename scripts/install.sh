#!/usr/bin/env bash
# Installs hf_seqobj (editable) into the active Python environment, with an optional extra: test, dev or bench.
#   bash scripts/install.sh [test|dev|bench]
# torch: an already installed torch (CUDA or CPU) is kept. Without one, a machine with an NVIDIA driver gets the
# default build from the package index; a machine without gets the CPU build: torch==$HF_SEQOBJ_CPU_TORCH (2.13.0,
# whose CPU wheel this project's machines carry), from $HF_SEQOBJ_TORCH_INDEX_URL when set (elsewhere, set it to
# PyTorch's CPU index, https://download.pytorch.org/whl/cpu, so that pip does not fetch a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
if python -c "import torch" >/dev/null 2>&1; then
  echo "install.sh: keeping the installed torch $(python -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1; then
  python -m pip install --quiet torch
else
  index=()
  if [[ -n "${HF_SEQOBJ_TORCH_INDEX_URL:-}" ]]; then index=(--index-url "$HF_SEQOBJ_TORCH_INDEX_URL"); fi
  python -m pip install --quiet "torch==${HF_SEQOBJ_CPU_TORCH:-2.13.0}" "${index[@]}"
fi
python -m pip install --quiet -e ".${extra:+[$extra]}"
python -c "import hf_seqobj, torch; print('install.sh: hf_seqobj', hf_seqobj.__version__, 'with torch', torch.__version__)"
