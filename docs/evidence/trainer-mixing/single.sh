#!/usr/bin/env bash
# Candidate E1 of rule-single.md: the candidate's steps 2-5 and the rule's step 1 (val), after M's training (the
# command of docs/results.md). Writes runs/mix1/ and docs/evidence/trainer-mixing/*-E1*. The rule's later steps
# are at the end, commented out: they run only if step 1 holds (it did not; the first run went on to them and was
# stopped, their output discarded unread).
set -euo pipefail
cd "$(dirname "$0")/../../.."
E=docs/evidence/trainer-mixing
M=runs/esc50-mix-seed0-fold1/fold1/best.safetensors
S=runs/mix1/ship/soundclr-esc50-effl0.safetensors
mkdir -p runs/mix1/ship
sha256sum "$M"
# ship_model/adapt's two tops need an ensemble (SoundCLREnsemble has at least 2 members): M is given twice, so
# the clean outputs are exactly M's (the mean of two equal distributions) and adapt trains a room top on each copy
[ -f runs/mix1/clean.safetensors ] || python scripts/ship_model.py "$M" "$M" \
  --status "candidate E1 (rule-single.md): one network trained with --backgrounds" --out runs/mix1/clean.safetensors
[ -f runs/mix1/adapted.safetensors ] || soundwatch adapt runs/mix1/clean.safetensors --out runs/mix1/adapted.safetensors \
  --data-dir ../shared/data/esc50-16k --epochs 20 --distill 0 --threads 2 > runs/mix1/adapt.json
[ -f "$S" ] || python scripts/ship_model.py runs/mix1/clean.safetensors --room-tops runs/mix1/adapted.safetensors \
  --class-weight 1 --status "candidate E1 (rule-single.md): one --backgrounds network with room tops" --out "$S"
# C0: the default config with E1, no thresholds file, no music context (to record and fit); C: as it would ship
sed -e "s|^model = \"\"|model = \"$S\"|" -e 's|^thresholds_file = "auto"|thresholds_file = ""|' \
    -e 's|^view_s = "auto"|view_s = 2.5|' -e 's|^music_threshold = 0.8|music_threshold = 0|' config.toml > $E/single-C0.toml
sed -e "s|^model = \"\"|model = \"$S\"|" config.toml > $E/single-C.toml
for s in train-ctx train-loud train-silence; do python scripts/replay_detect.py data/scenes/$s --config $E/single-C0.toml; done
python scripts/train_music_context.py data/scenes/train-ctx data/scenes/train-loud data/scenes/train-silence \
  --config $E/single-C0.toml --out runs/mix1/ship/soundclr-esc50-effl0.music.json
python scripts/replay_detect.py data/scenes/val-large --config $E/single-C0.toml --set music_threshold=0.8 \
  --calibrate runs/mix1/ship/soundclr-esc50-effl0.thresholds.json 2>&1 | tee $E/calibrate-E1.log
cp runs/mix1/ship/soundclr-esc50-effl0.thresholds.json $E/thresholds-E1.json
cp runs/mix1/ship/soundclr-esc50-effl0.music.json $E/music-E1.json
python scripts/replay_detect.py data/scenes/val --config $E/single-C.toml --out $E/val-E1.json 2>&1 | tee $E/val-E1.txt
# python scripts/replay_detect.py data/scenes/judge-music --config $E/single-C.toml --out $E/judge-E1.json 2>&1 | tee $E/judge-E1.txt
# soundwatch eval "$S" --dataset esc50 --data-dir ../shared/data/esc50-16k --fold 1 --backend torch,onnx 2>&1 | tee $E/fold1-E1.txt
