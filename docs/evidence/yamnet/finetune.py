"""Exploratory probe F (plan.md): YAMNet (torch port) fine-tuned end to end on ESC-50 folds 2-5, half the crops mixed
over the train backgrounds, with background crops, 51-way head on mean+max of the 4 patch embeddings of a 2.4 s view.

    python docs/evidence/yamnet/finetune.py runs/yamnet        # writes runs/yamnet/finetuned.pt, logs per epoch
    python docs/evidence/yamnet/finetune.py runs/yamnet windows SRC.pkl SCENES DST.pkl   # replace a replay's probabilities
"""
import csv, pickle, sys, time
from pathlib import Path

import numpy as np, soundfile as sf, torch, torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from yamnet_torch import YAMNet  # noqa: E402

SR = 16000; VIEW = 15600 + 3 * 7680  # exactly 4 patches
ESC = '/work/shared/data/esc50-16k'
torch.set_num_threads(2)


class Model(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.y = YAMNet().load_tf(f'{d}/yamnet-weights.npz')
        self.head = nn.Linear(2048, 51)

    def patches(self, waves):  # (B, VIEW) -> (B, 4, 1024)
        B = waves.shape[0]
        specs = torch.stack([self.y.log_mel(w) for w in waves])  # no padding: VIEW gives exactly 4 patches
        return self.y.embed(specs.unfold(1, 96, 48).transpose(2, 3).reshape(-1, 1, 96, 64)).reshape(B, -1, 1024)

    def forward(self, waves):
        e = self.patches(waves)
        return self.head(torch.cat([e.mean(1), e.max(1).values], 1))


def clips(folds):
    out = []
    for r in csv.DictReader(open(f'{ESC}/meta/esc50.csv')):
        if int(r['fold']) in folds:
            x, _ = sf.read(f"{ESC}/audio/{r['filename'].replace('.wav', '.flac')}", dtype='float32')
            out.append((np.pad(x, (0, max(0, 5 * SR - len(x))))[:5 * SR], int(r['target'])))
    return out


def backgrounds(rng, n):
    man = [r for r in csv.DictReader(open('data/background-manifest.csv')) if r['split'] == 'train' and float(r['duration_s']) >= 5]
    segs = []
    for t in ('music', 'speech'):
        rows = [r for r in man if r['type'] == t]; w = np.array([float(r['duration_s']) for r in rows])
        for r in [rows[i] for i in rng.choice(len(rows), n // 2, p=w / w.sum())]:
            p = 'data/background/' + r['path']; fr = sf.info(p).frames
            x, _ = sf.read(p, start=int(rng.integers(0, max(1, fr - 5 * SR))), frames=5 * SR, dtype='float32', always_2d=True)
            segs.append(np.pad(x.mean(1), (0, 5 * SR - len(x))))
    return segs


def crop_event(x, rng):
    c = np.concatenate([[0.0], np.cumsum(x.astype(np.float64) ** 2)])
    e = (c[VIEW:] - c[:-VIEW])[::160]  # energy of every VIEW-long crop
    best = int(np.argmax(e)) * 160
    s = int(np.clip(best + rng.integers(-SR // 2, SR // 2 + 1), 0, len(x) - VIEW))
    return x[s:s + VIEW]


def train(d):
    rng = np.random.default_rng(0); torch.manual_seed(0)
    data = clips({2, 3, 4, 5}); bgs = backgrounds(rng, 800)
    m = Model(d); m.train(); m.y.eval()  # BN statistics stay as trained on AudioSet
    opt = torch.optim.Adam([{'params': m.y.parameters(), 'lr': 1e-4}, {'params': m.head.parameters(), 'lr': 1e-3}])
    for epoch in range(12):
        t0 = time.time(); order = rng.permutation(len(data)); tot = n = ok = 0
        items = [('c', i) for i in order] + [('b', None)] * (len(data) // 5)
        items = [items[i] for i in rng.permutation(len(items))]
        for b in range(0, len(items), 32):
            X, Y = [], []
            for kind, i in items[b:b + 32]:
                if kind == 'b':
                    g = bgs[rng.integers(len(bgs))]; s = int(rng.integers(0, len(g) - VIEW)); X.append(g[s:s + VIEW]); Y.append(50); continue
                x, y = data[i]; c = crop_event(x, rng)
                if rng.random() < 0.5:
                    g = bgs[rng.integers(len(bgs))]; s = int(rng.integers(0, len(g) - VIEW)); g = g[s:s + VIEW]
                    act = c[np.abs(c) > 1e-4]; ebr = rng.uniform(-9, 15)
                    r = lambda v: float(np.sqrt(np.mean(v ** 2) + 1e-12))  # noqa: E731
                    c = c + g * (r(act if len(act) else c) / max(r(g), 1e-6) / 10 ** (ebr / 20))
                    c = c / max(1.0, float(np.abs(c).max()))
                X.append(c); Y.append(y)
            X = torch.from_numpy(np.stack(X).astype(np.float32)); Y = torch.tensor(Y)
            out = m(X); loss = F.cross_entropy(out, Y)
            opt.zero_grad(); loss.backward(); opt.step()
            tot += float(loss.detach()) * len(Y); n += len(Y); ok += int((out.argmax(1) == Y).sum())
        print(f'epoch {epoch}: loss {tot / n:.4f}, train acc {ok / n:.4f}, {time.time() - t0:.0f} s', flush=True)
        torch.save(m.state_dict(), f'{d}/finetuned.pt')
    m.eval(); ok = 0; test = clips({1})
    with torch.no_grad():
        for x, y in test:
            crops = torch.from_numpy(np.stack([x[s:s + VIEW] for s in range(0, len(x) - VIEW + 1, 7680)]))
            ok += int(F.softmax(m(crops), 1)[:, :50].mean(0).argmax() == y)
    print(f'fold 1 clip accuracy (mean over 2.4 s crops every 0.48 s): {ok / len(test):.4f}', flush=True)


def windows(d, src, folder, dst):
    m = Model(d); m.load_state_dict(torch.load(f'{d}/finetuned.pt')); m.eval()
    rec = pickle.load(open(src, 'rb'))
    with torch.no_grad():
        for scene in rec:
            x, _ = sf.read(f'{folder}/{scene["name"]}', dtype='float32')
            x = torch.from_numpy(x if x.ndim == 1 else x.mean(1))
            ends = [w[2] - scene['t0'] for w in scene['windows']]
            crops = []
            for te in ends:
                e = int(round(te * SR)); s = e - VIEW
                c = x[max(0, s):e]; crops.append(F.pad(c, (VIEW - len(c), 0)))
            P = torch.cat([F.softmax(m(torch.stack(crops[i:i + 64])), 1) for i in range(0, len(crops), 64)]).numpy()
            scene['windows'] = [(P[k],) + tuple(w[1:]) for k, w in enumerate(scene['windows'])]
    pickle.dump(rec, open(dst, 'wb')); print('wrote', dst)


if __name__ == '__main__':
    if len(sys.argv) > 2 and sys.argv[2] == 'windows':
        windows(sys.argv[1], *sys.argv[3:6])
    else:
        train(sys.argv[1])
