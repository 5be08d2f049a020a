#!/usr/bin/env bash
# Multi30k en-de translation (configs/translation_multi30k_$ARCH.yaml, ARCH = t5 by default, or bart / gpt2) under
# accelerate.
#   [ARCH=bart] [NUM_PROCESSES=N] bash scripts/launch_translation.sh ACCELERATE_CONFIG [--key value ...]
# e.g. bash scripts/launch_translation.sh fsdp --objective dagger --oracle bleu     (see scripts/launch.sh)
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: [ARCH=t5|bart|gpt2] bash scripts/launch_translation.sh ACCELERATE_CONFIG [--key value ...]" >&2
  exit 2
fi
exec bash "$(dirname "$0")/launch.sh" "configs/translation_multi30k_${ARCH:-t5}.yaml" "$@"
