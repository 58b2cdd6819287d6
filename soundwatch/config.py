"""config.toml -> typed settings, in one place.

Every setting has a default here (and the same value, with a comment, in the
repository's ``config.toml``). A file may set any subset. Unknown sections or keys,
wrong types and out-of-range values are refused with a ``ConfigError`` naming the
file, the line, the key and the reason. CLI flags override the file via ``override``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from soundwatch.errors import ConfigError
from soundwatch.urls import mask_password

log = logging.getLogger(__name__)

CONFIG_ENV = "SOUNDWATCH_CONFIG"


@dataclass
class AudioSettings:
    device: str = ""  # index or case-insensitive name substring; "" = system default input
    sample_rate: int = 0  # capture rate; 0 = model rate if the device takes it, else device default
    channels: int = 0  # 0 = up to 2 of the device's channels, downmixed to mono
    blocksize: int = 1024  # frames per PortAudio callback
    ring_s: float = 30.0  # ring buffer length in seconds
    latency: str = "low"  # PortAudio latency hint: low|high
    no_audio_timeout_s: float = 2.0  # no block for this long = the device is gone: state no_audio, reopen
    reopen_backoff_max_s: float = 5.0  # reopen attempts back off 0.25 s, 0.5 s, ... up to this


@dataclass
class ListenSettings:
    model: str = ""  # checkpoint path; "" = the shipped default model
    backend: str = "auto"  # auto|torch|onnx|tensorrt
    compute: str = "auto"  # auto|cpu|cuda
    precision: str = "auto"  # auto (the backend's own: fp16 on TensorRT, fp32 elsewhere)|fp32|fp16|int8
    window_s: float = 5.0
    hop_s: float = 0.5
    max_batch: int = 8  # windows batched together when the engine falls behind
    top_k: int = 5
    threads: int = 0  # CPU threads for inference; 0 = library default


@dataclass
class PublishSettings:
    endpoint: str = "tcp://127.0.0.1:5556"
    status_interval_s: float = 1.0
    sndhwm: int = 1000  # ZeroMQ send high-water mark (messages per subscriber)
    insecure: bool = False  # allow a non-loopback endpoint without CURVE encryption
    curve_secret_key: str = ""  # server secret key file (soundwatch keys); enables CURVE
    curve_clients_dir: str = ""  # directory of authorised client public keys ("" = any client with the server key)
    metrics_port: int = 0  # Prometheus metrics on 127.0.0.1:PORT; 0 = off


# The labels the shipped model gives on speech (evidence on the validation split of the background
# corpus only: docs/results.md, "Speech awareness"). Holding back more labels (all the human non-speech
# sounds and animal calls) removed no further false event there and missed three times as many events.
SPEECH_CONFUSABLE = ("coughing", "laughing", "sneezing", "insects", "frog")


@dataclass
class DetectSettings:
    threshold: float = 0.5  # smoothed score that starts an event (default for every label)
    thresholds_file: str = "auto"  # per-class thresholds JSON; auto = the model's own calibrated file; "" = none
    release_ratio: float = 0.7  # an event ends under threshold * release_ratio (hysteresis)
    smooth_windows: int = 2  # scores averaged over this many windows
    min_duration_s: float = 0.0  # an event is reported once it has lasted this long
    min_level_dbfs: float = -70.0  # windows quieter than this report no events
    floor_gate_db: float = 3.0  # start events only this many dB over the room's running noise floor; 0 = off
    floor_window_s: float = 30.0  # the noise floor: 10th percentile of the hop levels over this many seconds
    instant_threshold: float = 0.0  # a window scoring this (unsmoothed) alerts at once; 0 = off
    onset_pause_s: float = 2.0  # start: the sound followed back across shorter pauses; 0 = the last rise
    # The model sees the newest view_s seconds of each window, centred in silence (as ESC-50's short, padded
    # clips look in training); 0 = the whole window; "auto" = what the model's thresholds file was calibrated
    # with (the shipped model: 2.5), else 0.
    view_s: float | str = field(default="auto", metadata={"kind": "auto_or_seconds"})
    vad: bool = True  # voice-activity detector (Silero VAD): a speech share on every `scores` message
    speech_hold_ratio: float = 0.3  # while this share of the window is speech, speech_confusable labels start nothing
    speech_confusable: tuple = SPEECH_CONFUSABLE  # labels speech is confused with (held back while speech dominates)
    music_threshold: float = 0.8  # while music plays (the model's music context), events start only at this; 0 = off
    music_confusable: tuple = ()  # the labels music_threshold applies to; () = every label
    # while music plays, a label under music_threshold still starts at this many times its mean over the music
    # context (a sound new to the music); 0 = off
    music_novelty: float = 0.0
    # the music context: auto = the model's own <model>.music.json; or a file `calibrate music` wrote
    music_file: str = "auto"
    # only these labels start events (a watch list); () = every label. `calibrate thresholds` then spends the
    # false-alarm budget on them alone, and eval-scenes scores only their events (others are background)
    labels: tuple = ()


@dataclass
class EventSettings:
    log_path: str = "~/.local/state/soundwatch/events.jsonl"  # "" = no event log
    log_max_bytes: int = 10_000_000  # rotate the event log past this size
    log_backups: int = 5  # rotated logs kept
    clips_dir: str = ""  # "" = no clip recording
    pre_roll_s: float = 2.0  # audio kept before an event's start
    post_roll_s: float = 2.0  # audio kept after its end
    max_clips: int = 500  # oldest clips deleted beyond this count
    max_clip_bytes: int = 500_000_000  # ... or beyond this total size
    privacy: bool = False  # never write a clip that contains speech (needs [detect] vad)


# Labels that become Home Assistant entities by default: the ESC-50 sounds a home monitor is for.
# Labels a model does not have are left out (with a log line) when this default is in force.
MQTT_LABELS = ("crying_baby", "dog", "glass_breaking", "door_wood_knock", "siren", "clock_alarm", "crackling_fire")


@dataclass
class MqttSettings:
    url: str = ""  # broker mqtt://HOST[:PORT] or mqtts://HOST[:PORT]; "" = MQTT off
    username: str = ""  # broker user ("" = none, or the user in the URL)
    password_file: str = ""  # file whose first line is the password
    password_env: str = "SOUNDWATCH_MQTT_PASSWORD"  # else: the environment variable holding it
    ca_file: str = ""  # mqtts: CA bundle (PEM) that signed the broker's certificate; "" = the system's
    client_id: str = ""  # "" = soundwatch-<host>-<pid>
    topic_prefix: str = "soundwatch"  # every soundwatch topic starts with it
    qos: int = 1  # QoS of states, events and availability (0, 1, 2)
    retain: bool = True  # retain the ON/OFF states and the last detection
    keepalive_s: int = 30  # MQTT keep-alive; the broker declares the daemon offline 1.5x this after it vanishes
    connect_timeout_s: float = 5.0  # at start, wait this long for the broker's answer, then go on without it
    reconnect_max_s: float = 60.0  # reconnect back-off: 1 s, 2 s, 4 s, ... up to this
    max_queued: int = 1000  # QoS>0 messages held while the broker is away; beyond, dropped and counted as lost
    level_interval_s: float = 10.0  # input level (Leq of the interval, dBFS) every this many seconds
    status_interval_s: float = 30.0  # the daemon's status JSON every this many seconds
    discovery: bool = True  # Home Assistant MQTT discovery
    discovery_prefix: str = "homeassistant"  # Home Assistant's discovery prefix (its birth topic: <prefix>/status)
    labels: tuple = MQTT_LABELS  # labels that become Home Assistant entities; ["*"] = every label


@dataclass
class WebhookSettings:
    urls: tuple = ()  # POST each event's JSON to these http(s) URLs; () = off
    labels: tuple = ()  # only these labels' events (() = every label)
    events: tuple = ("start",)  # which events are posted: "start" and/or "end"
    cooldown_s: float = 60.0  # per URL and label: a start within this long of the last one posted is not posted
    timeout_s: float = 5.0  # a request taking longer is abandoned and counted as failed
    max_queued: int = 100  # events waiting per URL; beyond, the oldest is dropped and counted


@dataclass
class TrainSettings:
    arch: str = "efficientnet_lite0"
    pretrained: bool = True
    loss: str = "hybrid"  # ce|supcon|hybrid
    alpha: float = 0.5
    temperature: float = 0.05
    lr: float = 5e-4
    lr_us8k: float = 1e-4
    weight_decay: float = 1e-3
    warmup_epochs: int = 10
    lr_decay: float = 0.98
    epochs: int = 800
    batch_size: int = 128
    seed: int = 0
    protocol: str = "cv"  # cv|paper
    val_fraction: float = 0.125  # share of the training folds held in for checkpoint choice
    val_split: str = "source"  # source: whole source recordings held out; random: clip by clip
    linear_epochs: int = 20  # loss = supcon: epochs of the linear classifier stage
    clips_per_class: int = 0  # batches of groups of N clips per class (0: plain shuffle)
    head_lr_scale: float = 1.0  # the fresh heads' (and logit scale's) learning rate relative to lr
    logit_scale: float = 10.0  # initial (learnable) classifier logit scale
    schedule: str = "exp"  # exp: x lr_decay an epoch after warm-up (the paper's); cosine: half cosine to 0
    ema: float = 0.0  # decay of a moving average of the weights, evaluated and saved (0: off)
    mixup: float = 0.0  # waveform mixup, lam ~ Beta(mixup, mixup) (0: off)
    backgrounds: str = ""  # background corpus whose train split is mixed under the clips ("" = off)
    background_manifest: str = ""  # its manifest ("" = <corpus>-manifest.csv beside the corpus folder)
    mix_share: float = 0.5  # with backgrounds: share of the training clips mixed over a background
    mix_ebr_min: float = -9.0  # event-to-background ratio of a mixture, dB, drawn uniformly between these
    mix_ebr_max: float = 15.0
    mix_streams: int = 12  # with backgrounds: 2-minute streams made per type from the train split (more: more heard)


SOURCE_KINDS = ("device", "file", "stream")
SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


@dataclass
class SourceSettings:
    """One ``[[sources]]`` entry: an input of its own, with its own detection overrides."""

    name: str = ""  # in topics and messages: letters, digits, _ and -; "" = from the device, file or URL
    kind: str = "device"  # device | file | stream
    device: str = ""  # kind = device: index or name substring ("" = the system's default input)
    path: str = ""  # kind = file: a WAV/FLAC/OGG, played at real-time pace
    url: str = ""  # kind = stream: rtsp://, http://, ... anything FFmpeg opens
    gain_db: float = 0.0  # applied to this source's audio before the model (-60..60 dB)
    detect: dict = field(default_factory=dict)  # overrides of [detect] keys for this source


@dataclass
class Settings:
    audio: AudioSettings = field(default_factory=AudioSettings)
    listen: ListenSettings = field(default_factory=ListenSettings)
    publish: PublishSettings = field(default_factory=PublishSettings)
    detect: DetectSettings = field(default_factory=DetectSettings)
    events: EventSettings = field(default_factory=EventSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    sources: list = field(default_factory=list)  # [[sources]] entries (SourceSettings); [] = the command line's
    train: TrainSettings = field(default_factory=TrainSettings)


CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("listen", "backend"): ("auto", "torch", "onnx", "tensorrt"),
    ("listen", "compute"): ("auto", "cpu", "cuda"),
    ("listen", "precision"): ("auto", "fp32", "fp16", "int8"),
    ("audio", "latency"): ("low", "high"),
    ("train", "loss"): ("ce", "supcon", "hybrid"),
    ("train", "protocol"): ("cv", "paper"),
    ("train", "schedule"): ("exp", "cosine"),
    ("train", "val_split"): ("source", "random"),
}
POSITIVE = {
    ("audio", "blocksize"),
    ("audio", "ring_s"),
    ("listen", "window_s"),
    ("listen", "hop_s"),
    ("listen", "max_batch"),
    ("listen", "top_k"),
    ("publish", "status_interval_s"),
    ("publish", "sndhwm"),
    ("audio", "no_audio_timeout_s"),
    ("audio", "reopen_backoff_max_s"),
    ("detect", "smooth_windows"),
    ("detect", "floor_window_s"),
    ("events", "log_max_bytes"),
    ("events", "max_clips"),
    ("events", "max_clip_bytes"),
    ("mqtt", "keepalive_s"),
    ("mqtt", "connect_timeout_s"),
    ("mqtt", "reconnect_max_s"),
    ("mqtt", "max_queued"),
    ("mqtt", "level_interval_s"),
    ("mqtt", "status_interval_s"),
    ("webhook", "timeout_s"),
    ("webhook", "max_queued"),
    ("train", "lr"),
    ("train", "head_lr_scale"),
    ("train", "logit_scale"),
    ("train", "lr_us8k"),
    ("train", "epochs"),
    ("train", "batch_size"),
    ("train", "temperature"),
    ("train", "mix_streams"),
}


# Keys soundwatch once had and no longer reads: a config that still sets them loads, with a warning.
RETIRED = {
    ("train", "workers"): "nothing read it (clips are decoded once into a cached array: no loader workers)",
}

NON_NEGATIVE = {
    ("audio", "sample_rate"),
    ("audio", "channels"),
    ("listen", "threads"),
    ("publish", "metrics_port"),
    ("detect", "min_duration_s"),
    ("detect", "floor_gate_db"),
    ("detect", "instant_threshold"),
    ("detect", "onset_pause_s"),
    ("events", "log_backups"),
    ("mqtt", "qos"),
    ("webhook", "cooldown_s"),
    ("events", "pre_roll_s"),
    ("events", "post_roll_s"),
    ("train", "weight_decay"),
    ("train", "warmup_epochs"),
    ("train", "seed"),
    ("train", "linear_epochs"),
    ("train", "clips_per_class"),
    ("train", "mixup"),
    ("train", "mix_share"),
}
# Closed upper bounds: beyond them a value is a typo, or asks for more memory than any machine has.
MAXIMUM = {
    ("mqtt", "qos"): 2,
    ("mqtt", "keepalive_s"): 65535,
    ("audio", "ring_s"): 3600.0,
    ("detect", "instant_threshold"): 1.0,
    ("train", "mix_share"): 1.0,
    ("publish", "metrics_port"): 65535,
    ("audio", "channels"): 1024,
    ("audio", "sample_rate"): 768_000,
    ("audio", "blocksize"): 1_048_576,
}
INT_MAX = 2**31 - 1  # every count fits a C int (ZeroMQ options, thread counts, PortAudio)
BIG_INTS = {("events", "log_max_bytes"), ("events", "max_clip_bytes")}  # byte sizes may pass 2 GiB


def _line_of(text: str, section: str, key: str | None) -> int | None:
    """Line number (1-based) of ``key`` in ``[section]`` (or of the header when key is None)."""
    current = None
    for number, line in enumerate(text.splitlines(), 1):
        header = re.match(r"\s*\[([^\]]+)\]", line)
        if header:
            current = header.group(1).strip()
            if key is None and current == section:
                return number
        elif current == section and key and re.match(rf"\s*{re.escape(key)}\s*=", line):
            return number
    return None


def _kind(f: dataclasses.Field) -> Any:
    """What a setting's values must be: its default's type, or a kind named in its metadata
    ("auto_or_seconds": the string "auto" or a number)."""
    return f.metadata.get("kind", type(f.default))


def _coerce(value: Any, kind: Any, where: str) -> Any:
    if kind == "auto_or_seconds":
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f'{where}: expected "auto" or a number of seconds, got {value!r}')
        return float(value)
    if kind is tuple:  # a list of strings
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f'{where}: expected a list of strings, e.g. ["coughing", "laughing"], got {value!r}')
        return tuple(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def validate(settings: Settings, where_of=lambda section, key: f"{section}.{key}") -> Settings:
    """Check choices and ranges; raise ConfigError naming the key."""
    for section_field in dataclasses.fields(settings):
        section = section_field.name
        if section == "sources":
            continue  # checked entry by entry when loaded (_load_sources)
        for key_field in dataclasses.fields(getattr(settings, section)):
            value = getattr(getattr(settings, section), key_field.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{where_of(section, key_field.name)}: must be a finite number, got {value!r}")
            if (
                isinstance(value, int)
                and not isinstance(value, bool)
                and (section, key_field.name) not in BIG_INTS
                and abs(value) > INT_MAX
            ):
                raise ConfigError(f"{where_of(section, key_field.name)}: {value!r} is too large")
    for (section, key), choices in CHOICES.items():
        value = getattr(getattr(settings, section), key)
        if value not in choices:
            raise ConfigError(f"{where_of(section, key)}: {value!r} is not one of {', '.join(choices)}")
    for section, key in POSITIVE:
        value = getattr(getattr(settings, section), key)
        if value <= 0:
            raise ConfigError(f"{where_of(section, key)}: must be > 0, got {value!r}")
    view = settings.detect.view_s
    if view != "auto" and not (isinstance(view, float) and math.isfinite(view) and view >= 0):
        raise ConfigError(f'{where_of("detect", "view_s")}: must be "auto" or a number of seconds >= 0, got {view!r}')
    if view != "auto" and view > settings.listen.window_s:
        raise ConfigError(
            f"{where_of('detect', 'view_s')}: {view:g} s is longer than the window (listen.window_s {settings.listen.window_s:g})"
        )
    for section, key in NON_NEGATIVE:
        value = getattr(getattr(settings, section), key)
        if value < 0:
            raise ConfigError(f"{where_of(section, key)}: must be >= 0, got {value!r}")
    for (section, key), limit in MAXIMUM.items():
        value = getattr(getattr(settings, section), key)
        if value > limit:
            raise ConfigError(f"{where_of(section, key)}: must be <= {limit}, got {value!r}")
    if settings.events.privacy and not settings.detect.vad:
        raise ConfigError(
            f"{where_of('events', 'privacy')}: privacy = true needs the voice-activity detector "
            "([detect] vad = true) to know which clips hold speech"
        )
    bad = [e for e in settings.webhook.events if e not in ("start", "end")]
    if bad or not settings.webhook.events:
        raise ConfigError(
            f'{where_of("webhook", "events")}: a list of "start" and/or "end", got {list(settings.webhook.events)!r}'
        )
    for url in settings.webhook.urls:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(
                f"{where_of('webhook', 'urls')}: {mask_password(url)!r} is not an http:// or https:// URL"
            )
    for key in ("topic_prefix", "discovery_prefix"):
        value = getattr(settings.mqtt, key)
        if not value or any(c in value for c in "+#\0") or value.startswith("/") or value.endswith("/"):
            raise ConfigError(
                f"{where_of('mqtt', key)}: an MQTT topic without wildcards (+, #) or a leading or "
                f"trailing /, got {value!r}"
            )
    if settings.listen.hop_s < 0.001:  # rounds to 0 samples at audio rates: the hop schedule would never advance
        raise ConfigError(f"{where_of('listen', 'hop_s')}: must be >= 0.001 s, got {settings.listen.hop_s!r}")
    if settings.listen.hop_s > settings.listen.window_s:
        raise ConfigError(f"{where_of('listen', 'hop_s')}: hop_s ({settings.listen.hop_s}) exceeds window_s")
    if settings.audio.ring_s < settings.listen.window_s:
        raise ConfigError(
            f"{where_of('audio', 'ring_s')}: ring_s ({settings.audio.ring_s}) is shorter than a "
            f"window (listen.window_s = {settings.listen.window_s})"
        )
    if not 0.0 < settings.detect.threshold <= 1.0:
        raise ConfigError(f"{where_of('detect', 'threshold')}: must be in (0, 1]")
    if not 0.0 < settings.detect.speech_hold_ratio <= 1.0:
        raise ConfigError(f"{where_of('detect', 'speech_hold_ratio')}: must be in (0, 1]")
    if not 0.0 <= settings.detect.music_threshold <= 1.0:
        raise ConfigError(f"{where_of('detect', 'music_threshold')}: must be in [0, 1] (0: off)")
    if not (settings.detect.music_novelty == 0.0 or 1.0 <= settings.detect.music_novelty < math.inf):
        raise ConfigError(f"{where_of('detect', 'music_novelty')}: a ratio of 1 or more, e.g. 10 (0: off)")
    if not settings.detect.music_file.strip():
        raise ConfigError(
            f'{where_of("detect", "music_file")}: give "auto" (the model\'s own <model>.music.json) or the file '
            "`soundwatch calibrate music` wrote; music_threshold = 0 turns the music context off"
        )
    if not 0.0 < settings.detect.release_ratio <= 1.0:
        raise ConfigError(f"{where_of('detect', 'release_ratio')}: must be in (0, 1]")
    if not 0.0 <= settings.train.alpha <= 1.0:
        raise ConfigError(f"{where_of('train', 'alpha')}: must be in [0, 1]")
    if not 0.0 < settings.train.lr_decay <= 1.0:
        raise ConfigError(f"{where_of('train', 'lr_decay')}: must be in (0, 1]")
    if not 0.0 <= settings.train.ema < 1.0:
        raise ConfigError(f"{where_of('train', 'ema')}: a decay in [0, 1), e.g. 0.998 (0 turns it off)")
    if not 0.0 <= settings.train.val_fraction < 1.0:
        raise ConfigError(f"{where_of('train', 'val_fraction')}: a share in [0, 1) (0: no validation split)")
    return settings


def load_settings(path: Path | None = None) -> Settings:
    """Settings from ``path`` (or nothing: all defaults). Raises ConfigError on any problem."""
    settings = Settings()
    if path is None:
        return settings
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "a TOML config must be UTF-8"
        ) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc

    def where(section: str, key: str | None = None) -> str:
        line = _line_of(text, section, key)
        name = f"{section}.{key}" if key else f"[{section}]"
        return f"{path}:{line}: {name}" if line else f"{path}: {name}"

    sections = {f.name: f for f in dataclasses.fields(Settings)}
    for section, values in data.items():
        if section not in sections:
            raise ConfigError(f"{where(section)}: unknown section; known: {', '.join(sections)}")
        if section == "sources":
            continue  # after the other sections: its detect overrides are checked against [detect]
        if not isinstance(values, dict):
            raise ConfigError(f"{where(section)}: must be a table")
        target = getattr(settings, section)
        fields = {f.name: f for f in dataclasses.fields(target)}
        for key, value in values.items():
            if (section, key) in RETIRED:
                log.warning("%s: retired setting, ignored: %s; remove it", where(section, key), RETIRED[section, key])
                continue
            if key not in fields:
                raise ConfigError(f"{where(section, key)}: unknown key; known in [{section}]: {', '.join(fields)}")
            setattr(target, key, _coerce(value, _kind(fields[key]), where(section, key)))
    validate(settings, where)
    if "sources" in data:
        settings.sources = _load_sources(data["sources"], settings, str(path))
    return settings


def _load_sources(entries: Any, settings: Settings, path: str) -> list[SourceSettings]:
    """``[[sources]]`` entries, each checked: known keys and types, a kind, a name fit for topics, the
    target its kind needs, and detect overrides that are valid ``[detect]`` settings."""
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"{path}: sources: write each source as a [[sources]] table")
    fields = {f.name: f for f in dataclasses.fields(SourceSettings)}
    detect_fields = {f.name: f for f in dataclasses.fields(DetectSettings)}
    out = []
    for i, entry in enumerate(entries):
        at = f"{path}: [[sources]] #{i + 1}"
        spec = SourceSettings()
        for key, value in entry.items():
            if key not in fields:
                raise ConfigError(f"{at}: unknown key {key!r}; known: {', '.join(fields)}")
            if key == "detect":
                if not isinstance(value, dict):
                    raise ConfigError(f"{at}: detect: a table of [detect] settings ([sources.detect])")
                for dkey, dvalue in value.items():
                    if dkey not in detect_fields:
                        raise ConfigError(
                            f"{at}: detect.{dkey}: not a [detect] setting; known: {', '.join(detect_fields)}"
                        )
                    spec.detect[dkey] = _coerce(dvalue, _kind(detect_fields[dkey]), f"{at}: detect.{dkey}")
                continue
            setattr(spec, key, _coerce(value, _kind(fields[key]), f"{at}: {key}"))
        if spec.kind not in SOURCE_KINDS:
            raise ConfigError(f"{at}: kind {spec.kind!r} is not one of {', '.join(SOURCE_KINDS)}")
        if spec.name and not SOURCE_NAME.fullmatch(spec.name):
            raise ConfigError(
                f"{at}: name {spec.name!r}: letters, digits, _ and - only (it goes in topics), "
                "at most 64, starting with a letter or digit"
            )
        if spec.kind == "file" and not spec.path:
            raise ConfigError(f'{at}: kind = "file" needs path = "..."')
        if spec.kind == "stream" and "://" not in spec.url:
            raise ConfigError(f'{at}: kind = "stream" needs url = "rtsp://..." (or http://, ...)')
        if not (math.isfinite(spec.gain_db) and -60.0 <= spec.gain_db <= 60.0):
            raise ConfigError(f"{at}: gain_db must be in -60..60 dB, got {spec.gain_db!r}")
        trial = dataclasses.replace(settings, detect=dataclasses.replace(settings.detect, **spec.detect))
        validate(trial, lambda section, key, at=at: f"{at}: {'detect.' if section == 'detect' else section + '.'}{key}")
        out.append(spec)
    names = [s.name for s in out if s.name]
    if len(set(names)) != len(names):
        raise ConfigError(
            f"{path}: two [[sources]] have the same name: {sorted({n for n in names if names.count(n) > 1})}"
        )
    return out


def default_config_path() -> Path | None:
    """$SOUNDWATCH_CONFIG, else ./config.toml when present, else None (built-in defaults)."""
    import os

    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    local = Path("config.toml")
    return local if local.is_file() else None


# Flags whose name is not the key's (elsewhere --key-with-dashes), so an error names the flag the user typed.
FLAG_NAMES = {
    ("detect", "thresholds_file"): "--thresholds",
    ("events", "log_path"): "--event-log",
    ("mqtt", "url"): "--mqtt",
    ("webhook", "urls"): "--webhook",
}


def override(settings: Settings, section: str, **values: Any) -> Settings:
    """Apply CLI flags (None = not given) on top of the file, then re-validate."""
    target = getattr(settings, section)
    for key, value in values.items():
        if value is not None:
            setattr(target, key, value)
    return validate(settings, lambda s, k: f"{FLAG_NAMES.get((s, k), '--' + k.replace('_', '-'))} ({s}.{k})")
