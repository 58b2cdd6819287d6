import sys, glob, numpy as np, torch, soundfile as sf, csv
from soundwatch.dsp.frontend import LogMel
from soundwatch.dsp.clips import recent_view
torch.set_num_threads(2)
fe = LogMel()
def stats(waves):
    with torch.inference_mode():
        db = fe(torch.from_numpy(np.stack(waves).astype(np.float32))).numpy()  # (B, M, T)
    out = []
    for d in db:
        active = d.max(axis=0) > -79.9
        a = d[:, active]
        if a.size == 0:
            out.append((np.nan,)*4); continue
        out.append(((a < -60).mean(), (a < -50).mean(), np.median(np.percentile(a, 10, axis=0)), np.percentile(a, 10)))
    return np.array(out)
# clean clips, folds 2-3 (training folds, for the audio statistic only)
meta = list(csv.DictReader(open('../shared/data/esc50-16k/meta/esc50.csv')))
clips = [r for r in meta if r['fold'] in ('2','3')]
waves = []
for r in clips:
    x, sr = sf.read(f"../shared/data/esc50-16k/audio/{r['filename'].replace('.wav','.flac')}", dtype='float32')
    waves.append(np.pad(x, (0, max(0, 80000-len(x))))[:80000])
C = np.concatenate([stats(waves[i:i+64]) for i in range(0, len(waves), 64)])
np.save('runs/gate/clean.npy', C)
res = {}
for f in sorted(glob.glob('data/scenes/val-large/*.flac')):
    x, sr = sf.read(f, dtype='float32')
    ws = []
    for end in range(80000, len(x), 32000):  # every 2 s
        ws.append(recent_view(x[end-80000:end], 40000))
    kind = f.split('/')[-1].split('-')[1] + ('-free' if '-free-' in f else '-ev')
    res.setdefault(kind, []).append(stats(ws))
for k in res: res[k] = np.concatenate(res[k])
np.savez('runs/gate/scenes.npz', **res)
names = ['frac<-60', 'frac<-50', 'med p10', 'p10']
for j, n in enumerate(names):
    print(n, 'clean q05/q25/q50', np.nanpercentile(C[:, j], [5, 25, 50]).round(3))
    for k, v in sorted(res.items()):
        print('   ', k, 'q50/q75/q95', np.nanpercentile(v[:, j], [50, 75, 95]).round(3))
