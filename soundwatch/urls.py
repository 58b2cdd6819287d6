"""Credentials in URLs (streams, brokers, webhooks) never reach messages, logs or the dashboard.

Both helpers work on any text, a URL or an error message that quotes one.
"""

from __future__ import annotations

import re

_PASSWORD = re.compile(r"(//[^/@:\s]*):[^/@\s]*@")
_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")


def mask_password(text: str) -> str:
    """``text`` with the password of every URL's user part shown as ``***`` (``https://bob:***@host/x``)."""
    return _PASSWORD.sub(r"\1:***@", text)


def strip_credentials(text: str) -> str:
    """``text`` with the whole user part of every URL removed (``rtsp://user:pw@host`` -> ``rtsp://host``)."""
    return _USERINFO.sub("", text)
