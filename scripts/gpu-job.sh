#!/usr/bin/env bash
# Run on a lent GPU machine, in one call of the device tool, with carry [".gpujob"] (python scripts/gpu_job.py
# pack writes it here first): soundwatch adapt --end-to-end on CUDA over the carried ESC-50 clips and
# backgrounds, then the model split into parts that can come back under $OUT (parts.json, the parts, the card,
# report.json, adapt.log). Extra arguments go to adapt, e.g.:
#   scripts/gpu-job.sh --epochs 12 --mixed-per-clip 1 --background-windows 1600 --distill 2
# Here, to try it without a GPU: GPU_JOB_DEVICE=cpu OUT=/tmp/job scripts/gpu-job.sh --epochs 1 ...
set -euo pipefail
cd "$(dirname "$0")/.."
job=.gpujob
if [ ! -f "$job/background/manifest.csv" ] || [ ! -f "$job/esc50/meta/esc50.csv" ]; then
  echo "error: no $job/ here: run 'python scripts/gpu_job.py pack' first and name .gpujob in carry" >&2
  exit 2
fi
out="${OUT:-/tmp/gpu-job-out}"
work=$(mktemp -d)
mkdir -p "$out"
# shellcheck source=scripts/lent-machine-env.sh
. scripts/lent-machine-env.sh
export SOUNDWATCH_CACHE="$work/cache"
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA GPU")' \
  | tee "$out/adapt.log"
rc=0  # adapt's report to report.json; its progress to the call's output and adapt.log
python3 -m soundwatch adapt --out "$work/adapted.safetensors" --data-dir "$job/esc50" --corpus "$job/background" \
  --manifest "$job/background/manifest.csv" --end-to-end --device "${GPU_JOB_DEVICE:-cuda}" "$@" \
  2>&1 >"$out/report.json" | tee -a "$out/adapt.log" || rc=$?
if [ "$rc" -ne 0 ]; then
  echo "error: adapt stopped with exit code $rc (see adapt.log)" >&2
  exit "$rc"
fi
python3 scripts/gpu_job.py split "$work/adapted.safetensors" "$out"
echo "done: $(ls "$out" | tr '\n' ' ')"
