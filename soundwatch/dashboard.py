"""The live terminal dashboard (rich Live): what the model hears, right now.

Input level meter (dBFS) with the speech share and music probability when they are on, the top-k
labels as bars, recent detection events, and the
health line (device, backend, latency, real-time factor, overflows, dropped windows).
Laid out to fit 80x24; redrawn at most 4 times a second from the daemon's loop.
"""

from __future__ import annotations

import threading
import time

from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

BAR_WIDTH = 30
FLOOR_DBFS = -80.0


def _bar(fraction: float, width: int = BAR_WIDTH) -> str:
    filled = max(0, min(width, int(round(fraction * width))))
    return "█" * filled + "·" * (width - filled)


def _sinks_line(status: dict) -> str:
    """`` | mqtt up, 0 lost | webhooks 3 sent, 0 failed`` for the sinks that are on; "" when none is."""
    parts = []
    if "mqtt" in status:
        m = status["mqtt"]
        parts.append(f"mqtt {'up' if m['connected'] else 'DOWN'}, {m['lost']} lost")
    if "webhook" in status:
        w = status["webhook"]
        parts.append(f"webhooks {w['sent']} sent, {w['failed']} failed")
    return "\n" + " | ".join(parts) if parts else ""


def render(daemon) -> Panel:
    if len(daemon.lanes) > 1:
        return render_many(daemon)
    lane = daemon.lane
    status = {**daemon.status(), **lane.status()}
    last = lane.last or {}
    level = last.get("hop_level_dbfs", -120.0)
    meter = Text(f"level {level:7.1f} dBFS ")
    meter.append(_bar((max(level, FLOOR_DBFS) - FLOOR_DBFS) / -FLOOR_DBFS), style="green" if level < -6 else "red")
    for key in ("speech", "music"):  # what holds labels back (VAD, music context), when on
        if last.get(key) is not None:
            meter.append(f"  {key} {last[key]:.2f}", style="yellow" if last[key] >= 0.5 else "dim")

    scores = Table.grid(padding=(0, 1))
    for item in last.get("top", [])[: daemon.top_k]:
        scores.add_row(f"{item['label'][:22]:<22}", Text(_bar(item["score"]), style="cyan"), f"{item['score']:.2f}")

    recent = Table.grid(padding=(0, 1))
    for ev in list(lane.recent_events)[-5:]:
        stamp = time.strftime("%H:%M:%S", time.localtime(ev.get("end") or ev["start"]))
        recent.add_row(stamp, ev["event"], ev["label"][:24], f"{ev.get('peak_score') or ev['score'] or 0:.2f}")

    lat = status["latency_ms"]
    health = Text(
        f"{status['device'][:28]} | {status['backend']}/{status['precision']} {status['compute']} | "
        f"lat {lat if lat is not None else '-'} ms | rtf {status['rtf'] if status['rtf'] is not None else '-'}\n"
        f"windows {status['windows']} | overflows {status['input_overflows']} | "
        f"dropped {status['dropped_windows']} | state {status['state']}" + _sinks_line(status),
        style="dim",
    )
    return Panel(
        Group(meter, Text(""), scores, Text("recent events", style="bold"), recent, health),
        title="soundwatch",
        width=80,
    )


ROWS = 12  # sources shown at once in 80x24; more are paged, a page every PAGE_S seconds
PAGE_S = 4.0


def render_many(daemon) -> Panel:
    """One line per source (level, state, top label, latency), paged past ``ROWS``; then the totals."""
    lanes = daemon.lanes
    pages = (len(lanes) + ROWS - 1) // ROWS
    page = int(time.monotonic() / PAGE_S) % pages
    table = Table(box=None, padding=(0, 1), show_edge=False)
    for col, width in (("source", 16), ("level", 14), ("state", 8), ("top label", 22), ("lat ms", 6)):
        table.add_column(col, width=width, no_wrap=True, overflow="ellipsis")
    for lane in lanes[page * ROWS : (page + 1) * ROWS]:
        last = lane.last or {}
        level = last.get("hop_level_dbfs", -120.0)
        top = (last.get("top") or [{"label": "-", "score": 0.0}])[0]
        lat = sorted(lane.counters.latencies_ms)
        table.add_row(
            lane.id,
            Text(f"{level:5.0f} ")
            + Text(_bar((max(level, FLOOR_DBFS) - FLOOR_DBFS) / -FLOOR_DBFS, width=8), style="green"),
            Text(lane.state, style="red" if lane.state != "running" else ""),
            f"{top['label'][:16]} {top['score']:.2f}",
            f"{lat[len(lat) // 2]:.0f}" if lat else "-",
        )
    status = daemon.status()
    recent = sorted((ev for lane in lanes for ev in lane.recent_events), key=lambda e: e.get("end") or e["start"])
    events = Text(
        "\n".join(
            f"{time.strftime('%H:%M:%S', time.localtime(ev.get('end') or ev['start']))} "
            f"{ev['source'][:16]:<16} {ev['event']:<5} {ev['label'][:24]}"
            for ev in recent[-3:]
        )
    )
    inf = status["infer_ms"]
    footer = Text(
        f"{len(lanes)} sources, page {page + 1}/{pages} | {status['backend']}/{status['precision']} | "
        f"{inf if inf is not None else '-'} ms/window, batch {status['batch'] or '-'}\n"
        f"windows {status['windows']} | dropped {status['dropped_windows']} | no audio {status['no_audio_sources']}"
        + _sinks_line(status),
        style="dim",
    )
    return Panel(Group(table, Text("recent events", style="bold"), events, footer), title="soundwatch", width=80)


def run_with_dashboard(daemon, stop: threading.Event, duration: float | None) -> dict:
    next_draw = 0.0
    with Live(render(daemon), refresh_per_second=4, auto_refresh=False, screen=False) as live:

        def tick(d) -> None:
            nonlocal next_draw
            now = time.monotonic()
            if now >= next_draw:
                live.update(render(d), refresh=True)
                next_draw = now + 0.25

        return daemon.run(stop, duration, on_tick=tick)
