"""Strict JSON for everything soundwatch publishes or logs: no NaN or Infinity, which strict parsers reject."""

from __future__ import annotations

import json
import logging
import math

log = logging.getLogger(__name__)


def _finite(value):
    """``value`` with every non-finite float replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps(obj) -> str:
    """``json.dumps`` that never writes NaN or Infinity: non-finite numbers become null (and are logged)."""
    try:
        return json.dumps(obj, allow_nan=False)
    except ValueError:
        log.error("non-finite numbers replaced by null in: %.200s", obj)
        return json.dumps(_finite(obj), allow_nan=False)
