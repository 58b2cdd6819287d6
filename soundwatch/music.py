"""Is music playing? A context read from the model's own outputs, for the detector.

A closed-set model that hears music names sounds in it (water drops, thunderstorm, chirping birds),
and music lasts: minutes, not the seconds of an event. The model's output distribution over music
is distinctive, so a logistic regression over the mean log-probabilities of the newest
``context_windows`` windows tells music from a quiet room, speech or TV. While music plays the
detector asks more of a label before it starts an event (``[detect] music_threshold``).

The regression is made per model (its inputs are that model's outputs) by
``scripts/train_music_context.py`` from scenes recorded with ``record_windows``, and kept beside
the model as ``<model stem>.music.json`` with the model's sha256: weights made for other weights
are not used. ``soundwatch calibrate music`` fits one from a user's own folders; for the shipped model
it is written elsewhere (``calibration/music.json``) and named by ``[detect] music_file``, so the
shipped context (the one the shipped thresholds were calibrated with) is never overwritten. Running it
costs a 51-wide dot product a window.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from pathlib import Path

import numpy as np

from soundwatch.errors import ConfigError

log = logging.getLogger(__name__)

EPS = 1e-6  # probabilities are floored before the log (a softmax output of 0 has no log)


def sidecar_music(checkpoint: Path) -> Path:
    """Where a model's music context lives: ``<checkpoint stem>.music.json`` beside it."""
    return Path(checkpoint).with_name(Path(checkpoint).stem + ".music.json")


class MusicModel:
    """The regression's parameters (no state: each detector keeps its own ``MusicContext``)."""

    def __init__(
        self,
        classes: list[str],
        mean,
        scale,
        weight,
        bias: float,
        context_windows: int,
        cut: float = 0.5,
        min_windows: int | None = None,
    ):
        """``min_windows``: windows of sound the context needs before music may play (None: all of them)."""
        n = len(classes)
        self.classes = list(classes)
        self.mean, self.scale, self.weight = (np.asarray(v, dtype=np.float64) for v in (mean, scale, weight))
        if any(v.shape != (n,) for v in (self.mean, self.scale, self.weight)):
            raise ConfigError(f"music context: mean, scale and weight must have {n} values, one per class")
        if not (np.all(np.isfinite(self.mean)) and np.all(self.scale > 0) and np.all(np.isfinite(self.weight))):
            raise ConfigError("music context: mean and weight must be finite and every scale > 0")
        if not (math.isfinite(bias) and int(context_windows) >= 1 and 0 < cut < 1):
            raise ConfigError("music context: needs a finite bias, context_windows >= 1 and 0 < cut < 1")
        self.bias, self.context_windows, self.cut = float(bias), int(context_windows), float(cut)
        self.min_windows = self.context_windows if min_windows is None else int(min_windows)
        if not 1 <= self.min_windows <= self.context_windows:
            raise ConfigError("music context: min_windows must be in 1..context_windows")

    def to_dict(self) -> dict:
        return {
            "classes": self.classes,
            "context_windows": self.context_windows,
            "cut": self.cut,
            "min_windows": self.min_windows,
            "mean": [round(float(v), 6) for v in self.mean],
            "scale": [round(float(v), 6) for v in self.scale],
            "weight": [round(float(v), 6) for v in self.weight],
            "bias": round(self.bias, 6),
        }

    @classmethod
    def from_dict(cls, data: dict, path: Path) -> "MusicModel":
        try:
            return cls(
                data["classes"],
                data["mean"],
                data["scale"],
                data["weight"],
                float(data["bias"]),
                int(data["context_windows"]),
                float(data.get("cut", 0.5)),
                None if data.get("min_windows") is None else int(data["min_windows"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"music context {path}: not a music context file ({exc!r})") from exc
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def probability(self, mean_log_probs: np.ndarray) -> float:
        z = float(np.dot((mean_log_probs - self.mean) / self.scale, self.weight) + self.bias)
        return 1.0 / (1.0 + math.exp(-z)) if z > -500 else 0.0


class MusicContext:
    """One stream's running music probability: ``update`` once a window.

    Silence is no music: a window of (digital) silence empties the context. Music may play once the
    context holds the model's ``min_windows`` windows of sound (since the stream began or the last
    silence). The shipped context needs a full one, 10 s of sound: over digital silence a clean sound
    alone looks like music to it (docs/results.md, "A music context")."""

    def __init__(self, model: MusicModel):
        self.model = model
        self.recent: deque[np.ndarray] = deque(maxlen=model.context_windows)
        self.sum = np.zeros(len(model.classes))
        self.probability: float | None = None
        self.fed = 0

    def update(self, probs: np.ndarray, silent: bool = False) -> float | None:
        """Hear one window (``silent``: under the detector's min_level_dbfs). Returns the probability that
        music plays, None until the context holds ``min_windows`` windows."""
        if silent:
            self.reset()
            return None
        x = np.log(np.maximum(np.asarray(probs, dtype=np.float64), EPS))
        if len(self.recent) == self.recent.maxlen:
            self.sum -= self.recent[0]
        self.recent.append(x)
        self.sum += x
        self.fed += 1
        if self.fed % 256 == 0:
            self.sum = np.sum(self.recent, axis=0)  # no drift from long running sums
        enough = len(self.recent) >= self.model.min_windows
        self.probability = self.model.probability(self.sum / len(self.recent)) if enough else None
        return self.probability

    def usual(self) -> np.ndarray | None:
        """Each label's geometric-mean probability over the context's windows before the newest (what
        the music keeps making), None with fewer than two windows."""
        n = len(self.recent)
        if n < 2:
            return None
        return np.exp((self.sum - self.recent[-1]) / (n - 1))

    @property
    def playing(self) -> bool:
        return self.probability is not None and self.probability >= self.model.cut

    def reset(self) -> None:
        self.recent.clear()
        self.sum[:] = 0
        self.probability = None
        self.fed = 0


def load_music(checkpoint: Path, classes: list[str], path: Path | None = None) -> MusicModel | None:
    """A music context for ``checkpoint``: the model's own (``<stem>.music.json`` beside it, made for
    these exact weights, else None with a warning), or the file ``path`` names (``[detect] music_file``):
    the user asked for that one, so a missing file, or one made for other weights or labels, is an error."""
    own = path is None
    path = sidecar_music(checkpoint) if own else Path(path).expanduser()
    where = str(path) if own else f"detect.music_file {path}"
    if not path.is_file():
        if own:
            return None
        raise ConfigError(
            f"{where}: no such file; make it with `soundwatch calibrate music --music DIR --other DIR --out {path}`, "
            'or set music_file = "auto" (the model\'s own)'
        )
    from soundwatch.models.card import file_sha256

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"music context {path}: cannot read it as JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("checkpoint_sha256") != file_sha256(checkpoint):
        if not own:
            made_for = data.get("checkpoint", "other weights") if isinstance(data, dict) else "other weights"
            raise ConfigError(
                f"{where}: made for {made_for}, not for {checkpoint} as it is now (its outputs mean other things); "
                "fit one for this model with `soundwatch calibrate music`"
            )
        log.warning("%s was not made for %s as it is now; no music context", path, checkpoint)
        return None
    model = MusicModel.from_dict(data, path)
    if model.classes != list(classes):  # an engine of other labels over the same file (a test's stand-in)
        if not own:
            raise ConfigError(f"{where}: its labels are not the model's ({len(model.classes)} vs {len(classes)})")
        log.warning(
            "%s: its classes are not the model's (%d vs %d); no music context", path, len(model.classes), len(classes)
        )
        return None
    return model


def music_context_file(d, checkpoint: Path) -> Path | None:
    """The file ``resolve_music`` reads for ``[detect]`` settings ``d`` (None: the context is off)."""
    if not getattr(d, "music_threshold", 0):
        return None
    setting = getattr(d, "music_file", "auto")
    return sidecar_music(checkpoint) if setting == "auto" else Path(setting).expanduser()


def music_context_sha256(d, checkpoint: Path) -> str | None:
    """The sha256 of the music context ``d`` runs with (None: off, or no such file): what a thresholds
    calibration records, so that listen can tell thresholds made with another context."""
    path = music_context_file(d, checkpoint)
    if path is None or not path.is_file():
        return None
    from soundwatch.models.card import file_sha256

    return file_sha256(path)


_SAID_NO_CONTEXT: set[Path] = set()


def resolve_music(d, checkpoint: Path, classes: list[str]) -> MusicModel | None:
    """The music context ``[detect]`` settings ``d`` ask for: none with ``music_threshold`` 0; the file
    ``music_file`` names; else (``auto``) the model's own, with a warning where the model has none (the
    setting then changes nothing)."""
    path = music_context_file(d, checkpoint)
    if path is None:
        return None
    if getattr(d, "music_file", "auto") != "auto":
        return load_music(checkpoint, classes, path)
    model = load_music(checkpoint, classes)
    if model is None and Path(checkpoint) not in _SAID_NO_CONTEXT:  # once, not for every file or source
        _SAID_NO_CONTEXT.add(Path(checkpoint))
        log.warning(
            "%s has no music context (%s), so detect.music_threshold changes nothing: make one with "
            "`soundwatch calibrate music`, or set music_threshold = 0",
            checkpoint,
            sidecar_music(checkpoint).name,
        )
    return model


def context_features(probs_seq: np.ndarray, context_windows: int, silent: np.ndarray | None = None) -> np.ndarray:
    """What ``MusicContext`` averages for each window of one stream: the mean log-probability of the
    newest ``context_windows`` windows since the stream began or the last ``silent`` window (NaN for
    the silent windows themselves)."""
    x = np.log(np.maximum(np.asarray(probs_seq, dtype=np.float64), EPS))
    n = len(x)
    silent = np.zeros(n, bool) if silent is None else np.asarray(silent, bool)
    c = np.vstack([np.zeros((1, x.shape[1])), np.cumsum(np.where(silent[:, None], 0.0, x), axis=0)])
    idx = np.arange(1, n + 1)
    after_silence = np.maximum.accumulate(np.where(silent, idx, 0))  # windows up to the last silent one
    lo = np.maximum(after_silence, idx - context_windows)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (c[idx] - c[lo]) / (idx - lo)[:, None]
    out[silent] = np.nan
    return out


def fit_music(
    recorded: list[dict],
    classes: list[str],
    context_windows: int = 20,
    l2: float = 1e-3,
    min_windows: int | None = None,
    min_level_dbfs: float = -70.0,
) -> tuple[MusicModel, dict]:
    """A music context from scenes recorded with ``soundwatch.thresholds.record_windows``: every window of
    a scene of type ``music`` is music, every window of another type is not (windows under
    ``min_level_dbfs``, silence, are left out and empty the context, as in ``MusicContext``). Music and
    the rest weigh the same however many windows each has. Returns the model and a summary."""
    import torch

    feats, target, kinds = [], [], []
    for scene in recorded:
        if not scene["windows"]:
            continue
        silent = np.array([w[1] < min_level_dbfs for w in scene["windows"]])
        f = context_features(np.stack([w[0] for w in scene["windows"]]), context_windows, silent)[~silent]
        feats.append(f)
        target += [float(scene["type"] == "music")] * len(f)
        kinds += [scene["type"]] * len(f)
    y = np.asarray(target)
    for side, has in (("music", y > 0), ("anything but music", y == 0)):
        if not has.any():
            raise ConfigError(
                f"music context: no recording of {side} holds a window of sound (over min_level_dbfs "
                f"{min_level_dbfs:g} dBFS): needs recordings of music and of other sound"
            )
    x = np.vstack(feats)
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    xt = torch.tensor((x - mean) / scale, dtype=torch.float64)
    yt = torch.tensor(y, dtype=torch.float64)
    weight = torch.where(yt > 0, 0.5 / yt.mean(), 0.5 / (1 - yt.mean()))
    torch.manual_seed(0)
    lin = torch.nn.Linear(x.shape[1], 1, dtype=torch.float64)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def loss_fn():
        opt.zero_grad()
        out = torch.nn.functional.binary_cross_entropy_with_logits(lin(xt)[:, 0], yt, weight=weight)
        loss = out + l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(loss_fn)
    model = MusicModel(
        classes,
        mean,
        scale,
        lin.weight.detach().numpy()[0],
        float(lin.bias.detach()[0]),
        context_windows,
        min_windows=min_windows,
    )
    pred = np.array([model.probability(v) >= model.cut for v in x])
    kinds = np.array(kinds)
    summary = {
        "windows": int(len(y)),
        "music_windows": int(y.sum()),
        "train_accuracy": round(float((pred == (y > 0)).mean()), 4),
        "flagged_as_music": {str(t): round(float(pred[kinds == t].mean()), 4) for t in sorted(set(kinds))},
    }
    return model, summary


def write_music(model: MusicModel, checkpoint: Path, out: Path, **about) -> dict:
    """Write a music context file for ``checkpoint`` (its sha256 binds them) with ``about`` (what it was
    fitted on, how) beside the parameters."""
    from soundwatch.models.card import file_sha256

    data = {"checkpoint": Path(checkpoint).name, "checkpoint_sha256": file_sha256(checkpoint), **about}
    data.update(model.to_dict())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")  # a daemon starting meanwhile reads the old file or the new, whole
    part.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    part.replace(out)
    return data
