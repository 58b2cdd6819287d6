#!/usr/bin/env bash
# ESC-50 5-fold CV of the v2 recipe, fold 5 (folds 1-4 ran earlier; fold 5 ran with this script on 2026-12-02: 80.25%, docs/results.md); resumable.
cd "$(dirname "$0")/.."
args=(esc50 --data-dir ../shared/data/esc50-16k --folds 5 --arch efficientnet_lite0
  --loss hybrid --epochs 120 --batch-size 32 --clips-per-class 4 --warmup-epochs 2 --lr 5e-4
  --schedule cosine --ema 0.998 --mixup 0.2 --val-fraction 0 --threads 2 --seed 0
  --out runs/esc50-hybrid-v2-cv5)
extra=(); [ -f runs/esc50-hybrid-v2-cv5/config.json ] && extra=(--resume)
echo "start $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD) ${extra[*]}"
soundwatch train "${args[@]}" "${extra[@]}"
rc=$?  # taken before anything else runs: inside the echo below, $(date) would reset $? to 0
echo "end $(date -u +%FT%TZ) rc=$rc"
exit "$rc"
