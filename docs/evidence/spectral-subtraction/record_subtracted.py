"""Experiment: subtract the room's running per-band background (mel power) before the log, inside the model."""
import argparse, pickle, sys, time
from collections import deque
from pathlib import Path
import numpy as np, torch
from soundwatch.engines.base import Engine
from soundwatch.engines.torch_engine import TorchEngine
from soundwatch.dsp.frontend import AMIN
from soundwatch.models.card import resolve_model
from soundwatch.scenes_cli import annotated_files, offline_settings, reference_events, run_offline
from soundwatch.thresholds import _Recording

ap = argparse.ArgumentParser()
ap.add_argument("scenes", type=Path)
ap.add_argument("--k", type=float, default=0.0)
ap.add_argument("--beta", type=float, default=0.0)
ap.add_argument("--q", type=float, default=10.0)
ap.add_argument("--hist-s", type=float, default=30.0)
ap.add_argument("--out", type=Path, required=True)
ap.add_argument("--config", type=Path)
args = ap.parse_args()

settings = offline_settings(args.config, backend="torch", threads=2)
ckpt = resolve_model(None)
base = TorchEngine(ckpt, threads=2)
model = base.model
fe = model.frontend
VIEW_END = 60000  # view 2.5 s centred in 5 s at 16 kHz: audio in [20000, 60000)
NEW = slice(102, 118)  # frames centred in the newest hop [52000, 60000)
MAXF = int(args.hist_s * 16000 / 512)


class Gated(Engine):
    def __init__(self):
        self.card, self.name, self.precision, self.device = base.card, "torch", "fp32", "cpu"
        self.reset()

    def reset(self):
        self.hist = deque(maxlen=MAXF)

    @torch.inference_mode()
    def infer(self, waves):
        x = torch.from_numpy(self.check_input(waves))
        mel = torch.matmul(fe.mel_fb, fe.power_spectrogram(x))  # (B, M, T)
        floors = []
        for b in range(mel.shape[0]):
            for f in mel[b, :, NEW].T.numpy():
                self.hist.append(f)
            floors.append(np.percentile(np.stack(self.hist), args.q, axis=0))
        floor = torch.from_numpy(np.stack(floors).astype(np.float32))[:, :, None]
        if args.k > 0:
            mel = torch.maximum(mel - args.k * floor, args.beta * mel)
        db = 10.0 * torch.log10(torch.clamp(mel, min=AMIN))
        db = db - torch.amax(db, dim=(1, 2), keepdim=True)
        spec = torch.clamp(db, min=-fe.config.top_db)
        orig = fe.forward
        fe.forward = lambda wave: spec
        try:
            logits, _ = model(x)
        finally:
            fe.forward = orig
        return logits.float().numpy()


eng = Gated()
files = annotated_files(args.scenes)
recorded = []
t = time.time()
for i, path in enumerate(files, 1):
    eng.reset()
    kind, refs = reference_events(path)
    daemon, _, duration = run_offline(settings, path, eng, prepare=lambda d: setattr(d, "detector", _Recording(d.detector)))
    recorded.append({"name": path.name, "type": kind, "refs": refs, "duration_s": duration, "t0": daemon.t0,
                     "windows": daemon.detector.fed})
    print(f"[{i}/{len(files)}] {path.name} {time.time()-t:.0f}s", file=sys.stderr, flush=True)
args.out.parent.mkdir(parents=True, exist_ok=True)
args.out.write_bytes(pickle.dumps(recorded))
