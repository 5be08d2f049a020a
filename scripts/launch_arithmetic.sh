#!/usr/bin/env bash
# The generated arithmetic task with a tiny GPT-2 (configs/arithmetic_gpt2.yaml: teacher forcing, backspace noise and
# SequenceMatch compared) under accelerate.
#   [NUM_PROCESSES=N] bash scripts/launch_arithmetic.sh ACCELERATE_CONFIG [--key value ...]
# e.g. bash scripts/launch_arithmetic.sh cpu_2proc --max_steps 500     (see scripts/launch.sh)
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: bash scripts/launch_arithmetic.sh ACCELERATE_CONFIG [--key value ...]" >&2
  exit 2
fi
exec bash "$(dirname "$0")/launch.sh" "configs/arithmetic_gpt2.yaml" "$@"
