import pickle, sys, dataclasses
sys.path.insert(0, "/tmp/onset")
import replay as R
import numpy as np
from collections import deque
import soundwatch.detect as DM
from soundwatch.thresholds import replay

class Gate(DM.Detector):
    def init_extra(self):
        self.hops = deque(maxlen=60)
    def update(self, probs, level_dbfs, t_end, hop_level_dbfs=None, frame_levels=None, frame_s=0.0, speech=None):
        fl = np.asarray(frame_levels)
        n = int(round(self.recent_s / frame_s))
        recent = 10 * np.log10(np.mean(10 ** (fl[-n:] / 10)) + 1e-12)
        med = np.median(self.hops) if len(self.hops) >= 10 else None
        self.hops.append(hop_level_dbfs)
        if med is not None and recent < med + self.R:
            # block new starts: temporarily make thresholds infinite for labels not open
            saved = self.thresholds.copy(); saved_i = None if self.instant is None else self.instant.copy()
            self.thresholds = np.where(np.isin(np.arange(len(saved)), list(self.open)), saved, np.inf)
            try:
                return super().update(probs, level_dbfs, t_end, hop_level_dbfs, frame_levels, frame_s, speech)
            finally:
                self.thresholds = saved
        return super().update(probs, level_dbfs, t_end, hop_level_dbfs, frame_levels, frame_s, speech)

for path, o30 in (("/tmp/onset/val.pkl", "/tmp/onset/val-o30.pkl"), ("/tmp/onset/vall.pkl", "/tmp/onset/vall-o30.pkl")):
    rec = pickle.load(open(path, "rb")); R.O30 = pickle.load(open(o30, "rb"))
    print(path)
    R.analyse(rec, replay(rec, R.base_factory()), "current")
    for recent_s in (1.0, 2.5):
        for Rdb in (0.0, 1.0, 2.0, 3.0):
            R.analyse(rec, replay(rec, R.base_factory(Gate, R=Rdb, recent_s=recent_s)), f"recent {recent_s} R {Rdb}")
