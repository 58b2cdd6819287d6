#!/usr/bin/env bash
# Candidate E of rule-ensemble.md: its steps 2-5 and the rule's step 1 (val), after the two members' training
# (member seed 0: M, the command of docs/results.md; member seed 1: the same with --seed 1 --out
# runs/esc50-mix-seed1-fold1). Writes runs/mix-ens/ and docs/evidence/trainer-mixing/*-E.*. The rule's later
# steps are at the end, commented out: each runs only if the one before holds. Written before any of it ran.
set -euo pipefail
cd "$(dirname "$0")/../../.."
E=docs/evidence/trainer-mixing
M0=runs/esc50-mix-seed0-fold1/fold1/best.safetensors
M1=runs/esc50-mix-seed1-fold1/fold1/best.safetensors
S=runs/mix-ens/ship/soundclr-esc50-effl0.safetensors
mkdir -p runs/mix-ens/ship
sha256sum "$M0" "$M1"
[ -f runs/mix-ens/clean.safetensors ] || python scripts/ship_model.py "$M0" "$M1" \
  --status "candidate E (rule-ensemble.md): two networks trained with --backgrounds" --out runs/mix-ens/clean.safetensors
[ -f runs/mix-ens/adapted.safetensors ] || soundwatch adapt runs/mix-ens/clean.safetensors \
  --out runs/mix-ens/adapted.safetensors --data-dir ../shared/data/esc50-16k --epochs 20 --distill 0 --threads 2 \
  > runs/mix-ens/adapt.json
[ -f "$S" ] || python scripts/ship_model.py runs/mix-ens/clean.safetensors --room-tops runs/mix-ens/adapted.safetensors \
  --class-weight 1 --status "candidate E (rule-ensemble.md): two --backgrounds networks with room tops" --out "$S"
# C0: the default config with E, no thresholds file, no music context (to record and fit); C: as it would ship
sed -e "s|^model = \"\"|model = \"$S\"|" -e 's|^thresholds_file = "auto"|thresholds_file = ""|' \
    -e 's|^view_s = "auto"|view_s = 2.5|' -e 's|^music_threshold = 0.8|music_threshold = 0|' config.toml > $E/ens-C0.toml
sed -e "s|^model = \"\"|model = \"$S\"|" config.toml > $E/ens-C.toml
for s in train-ctx train-loud train-silence; do python scripts/replay_detect.py data/scenes/$s --config $E/ens-C0.toml; done
python scripts/train_music_context.py data/scenes/train-ctx data/scenes/train-loud data/scenes/train-silence \
  --config $E/ens-C0.toml --out runs/mix-ens/ship/soundclr-esc50-effl0.music.json
python scripts/replay_detect.py data/scenes/val-large --config $E/ens-C0.toml --set music_threshold=0.8 \
  --calibrate runs/mix-ens/ship/soundclr-esc50-effl0.thresholds.json 2>&1 | tee $E/calibrate-E.log
cp runs/mix-ens/ship/soundclr-esc50-effl0.thresholds.json $E/thresholds-E.json
cp runs/mix-ens/ship/soundclr-esc50-effl0.music.json $E/music-E.json
python scripts/replay_detect.py data/scenes/val --config $E/ens-C.toml --out $E/val-E.json 2>&1 | tee $E/val-E.txt
# step 2, only if step 1 holds:
# python scripts/replay_detect.py data/scenes/judge-music --config $E/ens-C.toml --out $E/judge-E.json 2>&1 | tee $E/judge-E.txt
# step 3: soundwatch eval "$S" --dataset esc50 --data-dir ../shared/data/esc50-16k --fold 1 --backend torch,onnx 2>&1 | tee $E/fold1-E.txt
