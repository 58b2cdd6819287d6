#!/usr/bin/env bash
# The one-shot GPU check: run it first, in one call, whenever a GPU machine is lent. One command, no network,
# under 9 minutes (each part has its own time limit). Prints one Markdown section for docs/benchmarks.md;
# details and tracebacks go to gpu_check.log.
#   bench/gpu_check.sh [ESC50_DIR]    # default: ../shared/data/esc50-16k, else data/esc50-16k, else .gpujob/esc50
#   (on a lent machine: python scripts/gpu_job.py pack here, then run it with carry [".gpujob"])
# Parts: parity on real clips (frontend CUDA vs CPU, torch CUDA vs ONNX, TensorRT fp16 vs ONNX when tensorrt
# imports), windows per second at batch 1/64/256 (soundwatch bench), one timed ESC-50 training epoch on CUDA, and
# one epoch of end-to-end adaptation on CUDA (soundwatch adapt --end-to-end --device cuda; stand-in corpus).
set -uo pipefail
cd "$(dirname "$0")/.."
data=""
for d in "${1:-}" ../shared/data/esc50-16k data/esc50-16k .gpujob/esc50; do
  if [ -n "$d" ] && [ -f "$d/meta/esc50.csv" ]; then data="$d"; break; fi
done
log=gpu_check.log
: > "$log"
# shellcheck source=scripts/lent-machine-env.sh
. scripts/lent-machine-env.sh 2>>"$log"  # the tree on PYTHONPATH; soundfile from .gpujob/wheels if missing
echo "## GPU check, $(date -u '+%Y-%m-%d %H:%M') UTC, commit $(git rev-parse --short HEAD 2>/dev/null || echo "${SOUNDWATCH_COMMIT:-unknown}")"
echo
echo "Command: \`bench/gpu_check.sh\`. $(python3 -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA GPU")' 2>>"$log")"
echo
if [ -z "$data" ]; then
  echo "No ESC-50 tree (give its path, or carry it as data/esc50-16k): parity and training skipped."
else
  echo "### Parity on ESC-50 fold-1 clips"
  echo
  timeout 150 python3 bench/gpu_check.py --data-dir "$data" --clips 64 2>>"$log" || echo "(the parity part failed or ran out of time: see $log)"
fi
echo
echo "### Windows per second (\`soundwatch bench\`, torch on CUDA, TensorRT if installed, ONNX Runtime on the CPU as the reference)"
echo
timeout 150 python3 -m soundwatch bench --backend torch,tensorrt,onnx --batch 1,64,256 --compute cuda --threads 4 \
  --repeats 20 --rounds 3 --markdown 2>>"$log" || echo "(the throughput part failed or ran out of time: see $log)"
if [ -n "$data" ]; then
  echo
  echo "### One ESC-50 training epoch on CUDA (fold 1 held out; includes decoding the clips on a first run)"
  echo
  out=$(mktemp -d)
  start=$(date +%s.%N)
  # --no-pretrained: the ImageNet weights' package (17 MB) does not travel; an epoch costs the same from random weights
  if timeout 150 python3 -m soundwatch train esc50 --data-dir "$data" --folds 1 --epochs 1 --device cuda --no-pretrained --out "$out" \
      >>"$log" 2>&1; then status="done"; else status="failed or ran out of time (see $log)"; fi
  end=$(date +%s.%N)
  echo "| run | wall time |"
  echo "|---|---|"
  echo "| \`soundwatch train esc50 --folds 1 --epochs 1 --device cuda --no-pretrained\`: $status | $(python3 -c "print(f'{$end - $start:.1f} s')") |"
  echo
  echo "### One epoch of end-to-end adaptation on CUDA (stand-in background corpus of ESC-50 clips)"
  echo
  echo "| check | result |"
  echo "|---|---|"
  timeout 90 python3 bench/gpu_check.py --data-dir "$data" --adapt 2>>"$log" \
    || echo "| adapt | failed or ran out of time (see $log) |"
fi
