"""Replay recorded windows through detector variants: recall, false events, start error of found events."""
import pickle, sys
from collections import defaultdict
import numpy as np
from soundwatch.scenes_cli import offline_settings
from soundwatch.thresholds import replay
from soundwatch.evaluate.scenes import score_file
from soundwatch.detect import detector_from_settings, resolve_thresholds
from soundwatch.models.card import resolve_model, read_card

def setup():
    settings = offline_settings(None, backend="onnx", threads=1)
    ckpt = resolve_model(None)
    return settings, ckpt

O30 = None
def analyse(rec, dets, label=""):
    global O30
    if O30 is None:
        import os
        O30 = pickle.load(open(os.environ.get("O30", "/tmp/onset/val-o30.pkl"), "rb"))
    b30 = defaultdict(list)
    found = 0; n = 0; errs = []; false = defaultdict(int); hours = defaultdict(float); bytype = defaultdict(list)
    for scene, ests in zip(rec, dets):
        s = score_file(scene["name"], scene["type"], scene["duration_s"], scene["refs"], ests, late_s=5.0, pre_s=1.0)
        for ref, f in zip(s.refs, s.found):
            n += 1
            if f:
                found += 1
                cands = [e for e in ests if e.label == ref.label and e.onset <= ref.offset + 5 and e.offset >= ref.onset]
                e = min(cands, key=lambda e: abs(e.onset - ref.onset))
                errs.append(e.onset - ref.onset); bytype[scene["type"]].append(e.onset - ref.onset)
                o = O30.get((scene["name"], round(ref.onset, 3), ref.label))
                if o is not None: b30[scene["type"]].append(e.onset - o)
        false[scene["type"]] += len(s.false_labels)
    errs = np.array(errs)
    w05 = np.mean(np.abs(errs) <= 0.5) if len(errs) else 0
    w1 = np.mean(np.abs(errs) <= 1.0) if len(errs) else 0
    print(f"{label:30s} found {found}/{n}  start<=0.5s {w05:.1%} <=1s {w1:.1%} median err {np.median(errs) if len(errs) else 0:+.2f} "
          f"false {dict(false)}  " + " ".join(f"{k}:{np.mean(np.abs(np.array(v))<=0.5):.0%}" for k, v in sorted(bytype.items())) + "  | o30: " + " ".join(f"{k}:{np.mean(np.abs(np.array(v))<=0.5):.0%}" for k, v in sorted(b30.items())) + f" all:{np.mean(np.abs(np.concatenate([np.array(v) for v in b30.values()]))<=0.5):.1%}")
    return errs

def base_factory(cls=None, **kw):
    import dataclasses
    from soundwatch.detect import Detector
    settings, ckpt = setup()
    classes = read_card(ckpt).classes
    d = settings.detect
    thr = resolve_thresholds(d.thresholds_file, ckpt, classes, d.threshold)
    def make():
        det = detector_from_settings(d, classes, thr, settings.listen.hop_s)
        if cls is not None:
            det.__class__ = cls
            for k, v in kw.items(): setattr(det, k, v)
            if hasattr(det, "init_extra"): det.init_extra()
        return det
    return make

if __name__ == "__main__":
    rec = pickle.load(open(sys.argv[1], "rb"))
    analyse(rec, replay(rec, base_factory()), "current")
