"""Home Assistant MQTT discovery: the topics soundwatch publishes and the entity configs that describe them.

Conventions (https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery): a retained
JSON config on ``<discovery_prefix>/<component>/<node_id>/<object_id>/config`` creates an
entity, an empty retained payload there removes it; Home Assistant announces its (re)start
with ``online`` on ``<discovery_prefix>/status`` (its birth message), after which the configs
are sent again.

Devices: one *bridge* device (the soundwatch daemon on this host; its one entity, a
connectivity sensor, follows the bridge's availability topic, whose last-will is
``offline``) and one device per source, linked to the bridge (``via_device``), holding
- a ``binary_sensor`` per listened label (ON while an event of that label lasts),
- an ``event`` entity that fires on each event start of a listened label (``event_type`` =
  the label, with its score),
- a ``sensor`` for the input level (Leq over ``level_interval_s``, dBFS),
- a ``sensor`` for the last detection (its label; the whole start event as attributes).
Every source entity is available only while both the bridge and the source are: the source's
availability goes ``offline`` when its audio is lost (``no_audio``) or the daemon stops.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from soundwatch import __version__

# binary_sensor device classes (https://www.home-assistant.io/integrations/binary_sensor/#device-class)
# for labels that mean more than "a sound": ON of `safety` means unsafe, `smoke` smoke detected.
# Every other label is `sound`. Home Assistant has no glass-break class; breaking glass is unsafe.
DEVICE_CLASSES = {
    "glass_breaking": "safety",
    "gun_shot": "safety",
    "siren": "safety",
    "smoke_alarm": "smoke",
    "smoke_detector": "smoke",
    "fire_alarm": "smoke",
    "carbon_monoxide_alarm": "carbon_monoxide",
}
ICONS = {
    "dog": "mdi:dog",
    "dog_bark": "mdi:dog",
    "cat": "mdi:cat",
    "crying_baby": "mdi:baby-face-outline",
    "glass_breaking": "mdi:glass-fragile",
    "door_wood_knock": "mdi:door",
    "siren": "mdi:alarm-light",
    "clock_alarm": "mdi:alarm",
    "crackling_fire": "mdi:fire",
    "car_horn": "mdi:bullhorn",
}


@dataclass(frozen=True)
class Topics:
    """Where soundwatch publishes, for one source (``<prefix>/<source>/...``) and the bridge."""

    prefix: str
    source: str

    @property
    def bridge_availability(self) -> str:
        return f"{self.prefix}/bridge/availability"

    @property
    def source_availability(self) -> str:
        return f"{self.prefix}/{self.source}/availability"

    def state(self, label: str) -> str:
        return f"{self.prefix}/{self.source}/{label}/state"

    @property
    def event(self) -> str:
        return f"{self.prefix}/{self.source}/event"

    @property
    def level(self) -> str:
        return f"{self.prefix}/{self.source}/level"

    @property
    def last_detection(self) -> str:
        return f"{self.prefix}/{self.source}/last_detection"

    @property
    def status(self) -> str:
        return f"{self.prefix}/{self.source}/status"


def pretty(label: str) -> str:
    return label.replace("_", " ").capitalize()


def event_template(labels: list[str]) -> str:
    """The ``value_template`` of the event entity: an HA event for the start of a listened label; nothing
    (which Home Assistant ignores) for ends and other labels."""
    return (
        "{% if value_json.event == 'start' and value_json.label in " + json.dumps(list(labels)) + " %}"
        "{{ {'event_type': value_json.label, 'score': value_json.score, 'start': value_json.start} | to_json }}"
        "{% endif %}"
    )


def bridge_id(host: str, prefix: str) -> str:
    """The bridge's node id: one per host and topic prefix (two daemons on a host need two prefixes)."""
    from soundwatch.integrations import slug

    return f"soundwatch_{host}" if prefix == "soundwatch" else f"soundwatch_{host}_{slug(prefix)}"


def discovery_configs(
    topics: Topics, labels: list[str], *, host: str, source_name: str, discovery_prefix: str, qos: int
) -> dict[str, dict]:
    """``{config topic: payload}`` for the bridge and one source listening for ``labels``."""
    bridge = bridge_id(host, topics.prefix)
    node = f"{bridge}_{topics.source}"
    origin = {"name": "soundwatch", "sw_version": __version__}
    bridge_device = {
        "identifiers": [bridge],
        "name": f"soundwatch ({host})",
        "manufacturer": "soundwatch",
        "model": "soundwatch daemon",
        "sw_version": __version__,
    }
    device = {
        "identifiers": [node],
        "name": f"soundwatch {source_name}",
        "manufacturer": "soundwatch",
        "model": "sound source",
        "sw_version": __version__,
        "via_device": bridge,
    }
    availability = {
        "availability": [{"topic": topics.bridge_availability}, {"topic": topics.source_availability}],
        "availability_mode": "all",
    }
    common = {"device": device, "origin": origin, "qos": qos, **availability}
    configs: dict[str, dict] = {
        f"{discovery_prefix}/binary_sensor/{bridge}/connectivity/config": {
            "name": "Running",
            "unique_id": f"{bridge}_connectivity",
            "state_topic": topics.bridge_availability,
            "payload_on": "online",
            "payload_off": "offline",
            "device_class": "connectivity",
            "entity_category": "diagnostic",
            "device": bridge_device,
            "origin": origin,
            "qos": qos,
        },
    }
    for label in labels:
        configs[f"{discovery_prefix}/binary_sensor/{node}/{label}/config"] = {
            "name": pretty(label),
            "unique_id": f"{node}_{label}",
            "state_topic": topics.state(label),
            "payload_on": "ON",
            "payload_off": "OFF",
            "device_class": DEVICE_CLASSES.get(label, "sound"),
            **({"icon": ICONS[label]} if label in ICONS else {}),
            **common,
        }
    configs[f"{discovery_prefix}/event/{node}/detection/config"] = {
        "name": "Detection",
        "unique_id": f"{node}_detection",
        "state_topic": topics.event,
        "event_types": list(labels),
        "value_template": event_template(labels),
        "icon": "mdi:ear-hearing",
        **common,
    }
    configs[f"{discovery_prefix}/sensor/{node}/level/config"] = {
        "name": "Sound level",
        "unique_id": f"{node}_level",
        "state_topic": topics.level,
        "unit_of_measurement": "dBFS",
        "state_class": "measurement",
        "suggested_display_precision": 1,
        "icon": "mdi:volume-high",
        **common,
    }
    configs[f"{discovery_prefix}/sensor/{node}/last_detection/config"] = {
        "name": "Last detection",
        "unique_id": f"{node}_last_detection",
        "state_topic": topics.last_detection,
        "value_template": "{{ value_json.label }}",
        "json_attributes_topic": topics.last_detection,
        "icon": "mdi:ear-hearing",
        **common,
    }
    return configs


def source_config_filter(discovery_prefix: str, topics: Topics, host: str) -> str:
    """The subscription matching every discovery config of this source, to find and remove stale ones."""
    return f"{discovery_prefix}/+/{bridge_id(host, topics.prefix)}_{topics.source}/+/config"
