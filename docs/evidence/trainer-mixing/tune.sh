#!/usr/bin/env bash
# rule-tune.md, step 1: E1 and E with thresholds calibrated on val-large plus the tune music, replayed on val.
# The models, music contexts and configs are E1's and E's (single.sh, ensemble.sh); the later steps are
# commented out at the end and run only for the candidate that holds step 1.
set -euo pipefail
cd "$(dirname "$0")/../../.."
E=docs/evidence/trainer-mixing
scripts/build-scenes.sh tune-music
for X in E1:single E:ens; do T=${X%%:*}; P=${X##*:}
  python scripts/replay_detect.py data/scenes/val-large data/scenes/tune-music --config $E/$P-C0.toml \
    --set music_threshold=0.8 --calibrate $E/thresholds-$T-T.json 2>&1 | tee $E/calibrate-$T-T.log
  python scripts/replay_detect.py data/scenes/val --config $E/$P-C.toml --thresholds $E/thresholds-$T-T.json \
    --out $E/val-$T-T.json 2>&1 | tee $E/val-$T-T.txt
done
# step 2, for the candidate holding step 1 (P, T as above):
# python scripts/replay_detect.py data/scenes/judge-music --config $E/$P-C.toml --thresholds $E/thresholds-$T-T.json --out $E/judge-$T-T.json
# step 3: soundwatch eval MODEL --dataset esc50 --data-dir ../shared/data/esc50-16k --fold 1 --backend torch,onnx
