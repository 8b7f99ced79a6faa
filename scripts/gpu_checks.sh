#!/usr/bin/env bash
# The GPU-only checks of issue 20 (docs/scale.md), one short script for a lent GPU machine (about 5 minutes):
#   bash scripts/gpu_checks.sh [OUT_DIR]
# Each check prints PASS, FAIL or SKIP with its reason, and the figures it measured; the exit status is the number
# of failed checks. Nothing here runs in CI or in `make test`.
#   1. bf16 FSDP code path on CUDA: a 3-step mgrpo run with fsdp (1 process: torch distributed checkpoints), bf16
#      mixed precision and gradient checkpointing, then a resume and `selfrl export`.
#   2. The same with 2 processes when the machine has 2 GPUs (NCCL needs one GPU per process).
#   3. vLLM: the GPU-only test (tests/test_vllm.py), a 3-step mgrpo run with use_vllm, and one with use_vllm + fsdp
#      + bf16, when vllm is installed.
set -u
OUT=${1:-${OUT:-/tmp/selfrl_gpu}}
mkdir -p "$OUT"
PY=${PY:-python}
fails=0
say() { echo "[gpu_checks] $*" | tee -a "$OUT/summary.txt"; }

if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  say "SKIP all: torch sees no CUDA device"; exit 0
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'gpus', torch.cuda.device_count())" | tee -a "$OUT/summary.txt"
NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")

# a tiny organism, trained here in seconds, as the model of every check
$PY - "$OUT/tiny" <<'PYEOF' >/dev/null 2>&1
import sys
from pathlib import Path
from selfrl.organism import OrganismSpec, train_organism
spec = OrganismSpec(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                    sft_max_steps=200, sft_eval_every=100, target_accuracy=1.1, sft_learning_rate=3e-3)
train_organism(spec, Path(sys.argv[1]), progress=False)
PYEOF
SETS="--set model=$OUT/tiny --set task=arith --set method=mgrpo --set iqr_filter=true --set beta=0.005 \
 --set max_steps=3 --set prompts_per_step=4 --set num_generations=8 --set max_completion_length=12 \
 --set eval_every=3 --set eval_limit=32 --set save_every=1 --set report_to=none --set progress=false --set device=cuda"

run_check() {  # name, command...
  local name=$1; shift
  local t0=$(date +%s)
  if "$@" >"$OUT/$name.log" 2>&1; then say "PASS $name ($(( $(date +%s) - t0 )) s)"
  else say "FAIL $name: $(tail -1 "$OUT/$name.log")"; fails=$((fails + 1)); fi
}

run_check fsdp_bf16_1gpu $PY -m selfrl train $SETS --set fsdp=true --set dtype=bfloat16 \
  --set gradient_checkpointing=true --set output_dir="$OUT/fsdp1"
rm -rf "$OUT/fsdp1/step_000003"
run_check fsdp_resume $PY -m selfrl train --resume "$OUT/fsdp1"
run_check fsdp_export $PY -m selfrl export "$OUT/fsdp1" --out "$OUT/fsdp1_export"
$PY -c "
from selfrl.logger import read_metrics
for r in read_metrics('$OUT/fsdp1'): print('fsdp1', r['step'], {k: r.get(k) for k in ('grad/norm', 'anchor/kl', 'val/accuracy', 'time/step_s')})
" | tee -a "$OUT/summary.txt"

if [ "$NGPU" -ge 2 ]; then
  run_check fsdp_bf16_2gpu $PY -m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1 \
    --mixed_precision no --dynamo_backend no -m selfrl train $SETS --set fsdp=true --set dtype=bfloat16 \
    --set output_dir="$OUT/fsdp2"
else
  say "SKIP fsdp_bf16_2gpu: $NGPU GPU (NCCL needs one GPU per process)"
fi

if $PY -c "import vllm" 2>/dev/null; then
  run_check vllm_test $PY -m pytest -q tests/test_vllm.py -k real_vllm
  run_check vllm_mgrpo $PY -m selfrl train $SETS --set use_vllm=true --set vllm_gpu_memory_utilization=0.2 \
    --set output_dir="$OUT/vllm1"
  run_check vllm_fsdp_bf16 $PY -m selfrl train $SETS --set use_vllm=true --set vllm_gpu_memory_utilization=0.2 \
    --set fsdp=true --set dtype=bfloat16 --set output_dir="$OUT/vllm_fsdp"
else
  say "SKIP vllm: the vllm package is not installed (pip install -e '.[vllm]')"
fi
say "failed checks: $fails"
exit $fails
