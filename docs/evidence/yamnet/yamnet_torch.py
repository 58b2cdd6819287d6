"""Exploratory: YAMNet in torch (its log-mel frontend and MobileNetV1), weights from dump_weights.py's .npz, checked
against TensorFlow's own outputs on real clips (dump_weights.py's reference .npz).

    python docs/evidence/yamnet/yamnet_torch.py runs/yamnet
"""
import math
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SR, WIN, HOP, NFFT, MELS = 16000, 400, 160, 512, 64
PATCH, PATCH_HOP = 96, 48
LAYERS = [(1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512)] + [(1, 512)] * 5 + [(2, 1024), (1, 1024)]


def mel_matrix() -> np.ndarray:
    """tf.signal.linear_to_mel_weight_matrix(64, 257, 16000, 125, 7500): triangles in HTK mel, DC bin zeroed."""
    mel = lambda f: 1127.0 * np.log1p(np.asarray(f, np.float64) / 700.0)  # noqa: E731
    bins = mel(np.linspace(0, SR / 2, NFFT // 2 + 1)[1:])[:, None]
    edges = np.linspace(mel(125.0), mel(7500.0), MELS + 2)
    lo, ce, hi = edges[:-2][None], edges[1:-1][None], edges[2:][None]
    w = np.maximum(0, np.minimum((bins - lo) / (ce - lo), (hi - bins) / (hi - ce)))
    return np.concatenate([np.zeros((1, MELS)), w]).astype(np.float32)


def pad_waveform(x: torch.Tensor) -> torch.Tensor:
    """YAMNet's padding: at least one patch, then a whole number of patch hops."""
    min_n = int((0.96 + 0.025 - 0.010) * SR)
    n = x.shape[-1]
    pad = max(0, min_n - n)
    n = max(n, min_n)
    hop = int(0.48 * SR)
    hops = math.ceil((n - min_n) / hop)
    pad += hop * hops - (n - min_n)
    return F.pad(x, (0, pad))


class YAMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("window", torch.hann_window(WIN, periodic=True))
        self.register_buffer("mel", torch.from_numpy(mel_matrix()))
        self.convs = nn.ModuleList()  # (conv, bn) pairs in TF's layer order

        def add(conv):
            self.convs.append(conv)
            self.convs.append(nn.BatchNorm2d(conv.out_channels, eps=1e-4, affine=False))

        add(nn.Conv2d(1, 32, 3, 2, bias=False))
        c_in = 32
        self.strides = [2]
        for stride, c_out in LAYERS:
            add(nn.Conv2d(c_in, c_in, 3, stride, groups=c_in, bias=False))
            add(nn.Conv2d(c_in, c_out, 1, 1, bias=False))
            self.strides += [stride, 1]
            c_in = c_out
        self.beta = nn.ParameterList([nn.Parameter(torch.zeros(m.num_features)) for m in self.convs[1::2]])
        self.logits = nn.Linear(1024, 521)

    def log_mel(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.unfold(-1, WIN, HOP) * self.window
        mag = torch.fft.rfft(frames, n=NFFT).abs()
        return torch.log(mag @ self.mel + 0.001)

    @staticmethod
    def same(x, k, s):  # TF "same" padding: the extra row/column at the end
        out = []
        for n in x.shape[-2:][::-1]:
            total = max((math.ceil(n / s) - 1) * s + k - n, 0)
            out += [total // 2, total - total // 2]
        return F.pad(x, out)

    def forward(self, wave: torch.Tensor):
        """wave: (samples,) at 16 kHz -> scores (patches, 521), embeddings (patches, 1024), log-mel (frames, 64)."""
        spec = self.log_mel(pad_waveform(wave))
        emb = self.embed(spec.unfold(0, PATCH, PATCH_HOP).transpose(1, 2).unsqueeze(1))  # (patches, 1, 96, 64)
        return torch.sigmoid(self.logits(emb)), emb, spec

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """log-mel patches (n, 1, 96, 64) -> embeddings (n, 1024): MobileNetV1 and global average pooling."""
        for i in range(len(self.convs) // 2):
            conv, bn = self.convs[2 * i], self.convs[2 * i + 1]
            x = conv(self.same(x, conv.kernel_size[0], self.strides[i]))
            x = F.relu(bn(x) + self.beta[i][None, :, None, None])
        return x.mean((2, 3))

    def load_tf(self, npz):
        W = np.load(npz)
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        for i in range(len(self.convs) // 2):
            conv, bn = self.convs[2 * i], self.convs[2 * i + 1]
            k = W[f"{2 * i:02d}.depthwise_kernel"] if conv.groups > 1 else W[f"{2 * i:02d}.kernel"]
            conv.weight.data = t(k.transpose(2, 3, 0, 1) if conv.groups > 1 else k.transpose(3, 2, 0, 1))
            bn.running_mean.data = t(W[f"{2 * i + 1:02d}.moving_mean"])
            bn.running_var.data = t(W[f"{2 * i + 1:02d}.moving_variance"])
            self.beta[i].data = t(W[f"{2 * i + 1:02d}.beta"])
        self.logits.weight.data = t(W["54.kernel"].T)
        self.logits.bias.data = t(W["54.bias"])
        return self.eval()


if __name__ == "__main__":
    d = sys.argv[1] if len(sys.argv) > 1 else "runs/yamnet"
    m = YAMNet().load_tf(f"{d}/yamnet-weights.npz")
    R = np.load(f"{d}/yamnet-reference.npz")
    with torch.no_grad():
        for j in range(6):
            s, e, spec = m(torch.from_numpy(R[f"x{j}"]))
            print(
                f"clip {j}: {len(R[f'x{j}'])} samples, patches {s.shape[0]} (TF {R[f's{j}'].shape[0]}); max |diff| "
                f"log-mel {np.abs(spec.numpy() - R[f'm{j}']).max():.2e}, embedding {np.abs(e.numpy() - R[f'e{j}']).max():.2e}, "
                f"scores {np.abs(s.numpy() - R[f's{j}']).max():.2e}; top class agrees: "
                f"{bool((s.numpy().mean(0).argmax() == R[f's{j}'].mean(0).argmax()))}"
            )
