import pickle, sys, dataclasses, json
sys.path.insert(0, "/tmp/onset")
import replay as R
from pathlib import Path
from soundwatch.thresholds import thresholds_for_budget, replay
from soundwatch.detect import detector_from_settings, thresholds_from
val = pickle.load(open("/tmp/onset/val.pkl", "rb")); vall = pickle.load(open("/tmp/onset/vall.pkl", "rb"))
R.O30 = pickle.load(open("/tmp/onset/val-o30.pkl", "rb"))
settings, ckpt = R.setup(); classes = R.read_card(ckpt).classes; d = settings.detect; hop = settings.listen.hop_s
for floor in (0.45, 0.4):
    res = thresholds_for_budget(settings, vall, 1.0, classes, min_threshold=floor)
    thr = thresholds_from(res, Path("x"), classes, 0.5)
    print(f"floor {floor}: val-large {res['found']} found, {res['false_events']} false", flush=True)
    R.analyse(val, replay(val, lambda: detector_from_settings(d, classes, thr, hop)), f"  val floor {floor}")
