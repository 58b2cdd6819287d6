#!/usr/bin/env bash
# Candidate H of rule-hybrid.md: M (seed 0, --backgrounds) and the default's clean member 1, made as E was
# (ensemble.sh); the rule's step 1 (val). Later steps commented out at the end. Written before any of it ran.
set -euo pipefail
cd "$(dirname "$0")/../../.."
E=docs/evidence/trainer-mixing
M0=runs/esc50-mix-seed0-fold1/fold1/best.safetensors
C1=runs/hybrid/member1.safetensors
S=runs/hybrid/ship/soundclr-esc50-effl0.safetensors
mkdir -p runs/hybrid/ship
[ -f "$C1" ] || python scripts/extract_member.py soundwatch/assets/soundclr-esc50-effl0.safetensors 1 "$C1"
sha256sum "$M0" "$C1"
[ -f runs/hybrid/clean.safetensors ] || python scripts/ship_model.py "$M0" "$C1" \
  --status "candidate H (rule-hybrid.md): a --backgrounds network and a clean one" --out runs/hybrid/clean.safetensors
[ -f runs/hybrid/adapted.safetensors ] || soundwatch adapt runs/hybrid/clean.safetensors \
  --out runs/hybrid/adapted.safetensors --data-dir ../shared/data/esc50-16k --epochs 20 --distill 0 --threads 2 \
  > runs/hybrid/adapt.json
[ -f "$S" ] || python scripts/ship_model.py runs/hybrid/clean.safetensors --room-tops runs/hybrid/adapted.safetensors \
  --class-weight 1 --status "candidate H (rule-hybrid.md): a --backgrounds network and a clean one, room tops" --out "$S"
sed -e "s|^model = \"\"|model = \"$S\"|" -e 's|^thresholds_file = "auto"|thresholds_file = ""|' \
    -e 's|^view_s = "auto"|view_s = 2.5|' -e 's|^music_threshold = 0.8|music_threshold = 0|' config.toml > $E/hyb-C0.toml
sed -e "s|^model = \"\"|model = \"$S\"|" config.toml > $E/hyb-C.toml
for s in train-ctx train-loud train-silence; do python scripts/replay_detect.py data/scenes/$s --config $E/hyb-C0.toml; done
python scripts/train_music_context.py data/scenes/train-ctx data/scenes/train-loud data/scenes/train-silence \
  --config $E/hyb-C0.toml --out runs/hybrid/ship/soundclr-esc50-effl0.music.json
python scripts/replay_detect.py data/scenes/val-large --config $E/hyb-C0.toml --set music_threshold=0.8 \
  --calibrate runs/hybrid/ship/soundclr-esc50-effl0.thresholds.json 2>&1 | tee $E/calibrate-H.log
cp runs/hybrid/ship/soundclr-esc50-effl0.thresholds.json $E/thresholds-H.json
cp runs/hybrid/ship/soundclr-esc50-effl0.music.json $E/music-H.json
python scripts/replay_detect.py data/scenes/val --config $E/hyb-C.toml --out $E/val-H.json 2>&1 | tee $E/val-H.txt
# step 2, only if step 1 holds:
# python scripts/replay_detect.py data/scenes/judge-music --config $E/hyb-C.toml --out $E/judge-H.json 2>&1 | tee $E/judge-H.txt
# step 3: soundwatch eval "$S" --dataset esc50 --data-dir ../shared/data/esc50-16k --fold 1 --backend torch,onnx 2>&1 | tee $E/fold1-H.txt
