#!/usr/bin/env bash
# Trains on a task config under `accelerate launch` with one of the packaged accelerate configs
# (hf_seqobj/accelerate_configs: cpu_2proc, single_gpu, multi_gpu, fsdp, fsdp1, zero2, zero3) or a config file.
#   bash scripts/launch.sh TASK_CONFIG.yaml ACCELERATE_CONFIG [--key value ...]
# The extra flags go to `hf-seqobj train` and override the task config (e.g. --objective dagger).
# The number of processes is $NUM_PROCESSES, else the number of GPUs that nvidia-smi lists (configs of several
# GPUs), else the accelerate config's own. The configs that train in bf16 (fsdp, fsdp1, zero2, zero3) get
# --bf16 true (DeepSpeed requires the training arguments to agree with its bf16 setting); cpu_2proc gets
# --use_cpu true. A later --bf16 false / --use_cpu false among the extra flags overrides them.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: bash scripts/launch.sh TASK_CONFIG.yaml ACCELERATE_CONFIG [--key value ...]" >&2
  exit 2
fi
absolute() { if [[ -f "$1" ]]; then echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; else echo "$1"; fi; }
task_config="$(absolute "$1")"
accelerate_config="$(absolute "$2")"
shift 2
# The task configs' data paths are relative to the repository root.
cd "$(dirname "$0")/.."
flags=()
case "$(basename "$accelerate_config" .yaml)" in
  fsdp | fsdp1 | zero2 | zero3) flags+=(--bf16 true) ;;
  cpu_2proc) flags+=(--use_cpu true) ;;
esac
processes="${NUM_PROCESSES:-}"
case "$(basename "$accelerate_config" .yaml)" in
  single_gpu | cpu_2proc) ;;
  *)
    if [[ -z "$processes" ]] && command -v nvidia-smi >/dev/null 2>&1; then
      processes="$(nvidia-smi -L | grep -c '^GPU' || true)"
      [[ "$processes" -gt 0 ]] || processes=""
    fi
    ;;
esac
exec hf-seqobj train "$task_config" --accelerate_config "$accelerate_config" \
  ${processes:+--num_processes "$processes"} ${flags[@]+"${flags[@]}"} "$@"
