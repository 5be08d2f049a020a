#!/usr/bin/env bash
# CoNLL-2003 NER (configs/ner_conll2003_$ARCH.yaml, ARCH = bart by default, or gpt2 / t5) under accelerate.
#   [ARCH=t5] [NUM_PROCESSES=N] bash scripts/launch_ner.sh ACCELERATE_CONFIG [--key value ...]
# e.g. bash scripts/launch_ner.sh zero2 --objective dagger --oracle span_f1     (see scripts/launch.sh)
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: [ARCH=bart|gpt2|t5] bash scripts/launch_ner.sh ACCELERATE_CONFIG [--key value ...]" >&2
  exit 2
fi
exec bash "$(dirname "$0")/launch.sh" "configs/ner_conll2003_${ARCH:-bart}.yaml" "$@"
