"""Input-device lookup for ``--device``: an index, or a case-insensitive name substring."""

from __future__ import annotations

from dataclasses import dataclass

from soundwatch.errors import DeviceError


@dataclass(frozen=True)
class InputDevice:
    index: int
    name: str
    hostapi: str
    default_samplerate: float
    channels: int


def list_input_devices() -> list[InputDevice]:
    """Every device with at least one input channel, as PortAudio sees it now."""
    import sounddevice as sd

    apis = sd.query_hostapis()
    return [
        InputDevice(
            d["index"],
            d["name"],
            apis[d["hostapi"]]["name"],
            float(d["default_samplerate"]),
            int(d["max_input_channels"]),
        )
        for d in sd.query_devices()
        if d["max_input_channels"] > 0
    ]


def describe_devices(devices: list[InputDevice]) -> str:
    if not devices:
        return "  (no input devices: is a microphone connected, or a sound server running?)"
    return "\n".join(
        f"  {d.index:>3}  {d.name}  [{d.hostapi}, {d.default_samplerate:g} Hz, {d.channels} ch]" for d in devices
    )


def find_input_device(spec: str | int | None) -> InputDevice:
    """Resolve ``spec`` (None/"" = the default input) or raise DeviceError listing the inputs."""
    import sounddevice as sd

    devices = list_input_devices()
    if spec is None or spec == "":
        default = sd.default.device[0]
        if default is None or default < 0:
            default = next((d.index for d in devices), -1)
        matches = [d for d in devices if d.index == default]
        what = "no default input device"
    elif isinstance(spec, int) or str(spec).strip().isdigit():
        matches = [d for d in devices if d.index == int(spec)]
        what = f"no input device with index {int(spec)}"
    else:
        needle = str(spec).lower()
        exact = [d for d in devices if d.name.lower() == needle]
        matches = exact or [d for d in devices if needle in d.name.lower()]
        what = f"no input device matches {spec!r}"
        if len(matches) > 1:
            raise DeviceError(
                f"{len(matches)} input devices match {spec!r}; give an index or a longer name:\n"
                + describe_devices(matches)
            )
    if not matches:
        raise DeviceError(f"{what}. Input devices:\n{describe_devices(devices)}")
    return matches[0]
