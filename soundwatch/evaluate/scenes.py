"""Event metrics for annotated recordings (DCASE-style tables: onset, offset, event_label).

Per file, the reference events (the annotation) are compared with the detected events
(the daemon's ``start``/``end`` pairs, in seconds from the file's start):

- **Event-based P/R/F1** (the sed_eval 0.2.1 definition, `EventBasedMetrics`): a detected event
  matches a reference event of the same label whose onset lies within ``collar_s`` of its own
  (``|onset_est - onset_ref| <= collar``); with ``offset_ratio > 0`` its offset must also lie
  within ``max(collar, offset_ratio * reference length)`` (sed_eval's ``percentage_of_length``;
  0 = no offset criterion). Matching is one-to-one and of maximum cardinality (a bipartite
  matching, as sed_eval's ``optimal``). Counts are summed over files, then P = TP / detected,
  R = TP / reference, F1 = 2PR / (P + R).
- **Recall with the right label**: the share of reference events overlapped by a detected event of
  the same label, where a reference event is taken to last until ``late_s`` after its offset (a
  window-based detector hears a sound until its window has moved past it: 5 s by default, the
  window length). No timing criterion beyond overlap.
- **Precision**: the share of detected events that overlap some reference event of their own label
  (same extended span). F1 is the harmonic mean of this precision and the recall above.
- **False events per hour** on event-free stretches: the time of the file farther than ``pre_s``
  before or ``late_s`` after every reference event; a detected event whose ``start`` lies there is
  a false event, whatever its label. Rate = false events / hours of event-free stretches.
- **95% intervals** (``recall_ci95``, ``false_per_hour_ci95``): how far a count this small pins the
  rate down. Recall: the Wilson score interval of found / events (as ``scipy.stats.binomtest`` gives it); false
  events per hour: the exact Poisson (Garwood) interval of the count over the event-free hours. No
  false event in a quarter hour still allows up to 14.8 an hour.
- **Start error** of a found reference event: the ``start`` of the detection of its label that
  overlaps it (extended span) with the ``start`` nearest the reference onset, minus that onset.
  Reported as the share of found events within 0.5 s (``start_within_0_5s``) and the median.

sed_eval itself is not used: 0.2.1 imports dcase_util, whose ``pkg_resources`` import fails on
setuptools >= 81 (this machine has 84). The functions here were checked against sed_eval 0.2.1
run in a separate environment (see tests/test_scenes.py for the hand-worked cases).
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from soundwatch.errors import UserError

EBR_KEY = "ebr_db"


@dataclass(frozen=True)
class Event:
    onset: float
    offset: float
    label: str
    ebr_db: float | None = None  # reference events of generated scenes: event-to-background ratio


def read_annotations(path: Path) -> list[Event]:
    """Events of a DCASE-style TSV: header ``onset offset event_label`` (a ``filename`` column is
    ignored); without a header, the columns are onset, offset, label."""
    try:
        lines = [ln.rstrip("\n") for ln in Path(path).read_text().splitlines() if ln.strip()]
    except OSError as exc:
        raise UserError(f"annotation {path}: cannot read it ({exc.strerror or exc})") from exc
    if not lines:
        return []
    first = lines[0].split("\t")
    if "onset" in first:
        cols = {name: first.index(name) for name in ("onset", "offset", "event_label") if name in first}
        if len(cols) < 3:
            raise UserError(f"annotation {path}: the header needs onset, offset and event_label columns")
        rows = lines[1:]
    else:
        cols = {"onset": 0, "offset": 1, "event_label": 2}
        rows = lines
    events = []
    for number, line in enumerate(rows, 2 if rows is not lines else 1):
        parts = line.split("\t")
        try:
            onset, offset = float(parts[cols["onset"]]), float(parts[cols["offset"]])
            label = parts[cols["event_label"]].strip()
        except (IndexError, ValueError):
            raise UserError(f"annotation {path}:{number}: expected onset<TAB>offset<TAB>label, got {line!r}") from None
        if not (math.isfinite(onset) and math.isfinite(offset)) or onset < 0:
            raise UserError(
                f"annotation {path}:{number}: onset and offset must be seconds from the recording's start "
                f"(0 or more), got {line!r}"
            )
        if offset < onset or not label:
            raise UserError(f"annotation {path}:{number}: offset before onset, or no label")
        events.append(Event(onset, offset, label))
    return sorted(events, key=lambda e: (e.onset, e.offset, e.label))


def max_matching(edges: dict[int, list[int]]) -> int:
    """Size of a maximum one-to-one matching of a bipartite graph (left -> list of right) (Kuhn)."""
    owner: dict[int, int] = {}

    def augment(u: int, seen: set[int]) -> bool:
        for v in edges.get(u, ()):
            if v in seen:
                continue
            seen.add(v)
            if v not in owner or augment(owner[v], seen):
                owner[v] = u
                return True
        return False

    return sum(augment(u, set()) for u in edges)


def event_based_hits(refs: list[Event], ests: list[Event], collar_s: float, offset_ratio: float = 0.0) -> int:
    """True positives of sed_eval's event-based metric on one file (label, onset collar, optional offset)."""
    edges: dict[int, list[int]] = {}
    for i, est in enumerate(ests):
        for j, ref in enumerate(refs):
            if ref.label != est.label or abs(ref.onset - est.onset) > collar_s:
                continue
            if offset_ratio > 0 and abs(ref.offset - est.offset) > max(
                collar_s, offset_ratio * (ref.offset - ref.onset)
            ):
                continue
            edges.setdefault(i, []).append(j)
    return max_matching(edges)


def _overlaps(a0: float, a1: float, b0: float, b1: float) -> bool:
    return a0 <= b1 and b0 <= a1


def watched_events(refs: list[Event], labels) -> list[Event]:
    """The reference events a watch list (``[detect] labels``) asks about; none named: all. The events of
    other labels become part of the background, where a detection of a watched label is a false event."""
    return [r for r in refs if r.label in labels] if labels else list(refs)


def event_free_seconds(refs: list[Event], duration: float, pre_s: float, late_s: float) -> float:
    """Length of the stretches farther than ``pre_s`` before / ``late_s`` after every reference event."""
    busy, last = 0.0, 0.0
    for lo, hi in sorted((max(0.0, r.onset - pre_s), min(duration, r.offset + late_s)) for r in refs):
        lo = max(lo, last)
        if hi > lo:
            busy += hi - lo
            last = hi
    return max(0.0, duration - busy)


def in_event_free_stretch(t: float, refs: list[Event], pre_s: float, late_s: float) -> bool:
    return not any(r.onset - pre_s <= t <= r.offset + late_s for r in refs)


@dataclass
class FileScore:
    """Counts for one file; everything a per-type table needs is a sum of these."""

    name: str
    type: str
    duration_s: float
    refs: list[Event]
    ests: list[Event]
    found: list[bool]  # per reference event: overlapped by a detection of its label
    correct: list[bool]  # per detection: overlaps a reference event of its label
    eb_tp: int
    free_s: float
    false_labels: list[str] = field(default_factory=list)
    start_errors: list[float] = field(default_factory=list)  # per found reference event, in order


def score_file(
    name: str,
    kind: str,
    duration_s: float,
    refs: list[Event],
    ests: list[Event],
    *,
    collar_s: float = 1.0,
    offset_ratio: float = 0.0,
    late_s: float = 5.0,
    pre_s: float = 1.0,
) -> FileScore:
    # per reference event: the detections of its label that overlap it (until late_s after its offset)
    matches = [
        [
            i
            for i, e in enumerate(ests)
            if e.label == r.label and _overlaps(e.onset, e.offset, r.onset, r.offset + late_s)
        ]
        for r in refs
    ]
    found = [bool(m) for m in matches]
    matched = {i for m in matches for i in m}
    correct = [i in matched for i in range(len(ests))]
    false_labels = [e.label for e in ests if in_event_free_stretch(e.onset, refs, pre_s, late_s)]
    start_errors = [min((ests[i].onset - r.onset for i in m), key=abs) for r, m in zip(refs, matches) if m]
    return FileScore(
        name,
        kind,
        duration_s,
        refs,
        ests,
        found,
        correct,
        event_based_hits(refs, ests, collar_s, offset_ratio),
        event_free_seconds(refs, duration_s, pre_s, late_s),
        false_labels,
        start_errors,
    )


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _f1(p: float | None, r: float | None) -> float | None:
    if p is None or r is None:
        return None
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def recall_interval(found: int, events: int, level: float = 0.95) -> tuple[float, float] | None:
    """The Wilson score interval of ``found`` of ``events`` (None without events): by its formula, the one
    ``scipy.stats.binomtest(...).proportion_ci(method="wilson")`` gives, with scipy.special's normal quantile
    (scipy.stats alone takes 1.7 s to import here, a third of eval-scenes' start-up)."""
    if not events:
        return None
    from scipy.special import ndtri

    z = float(ndtri(1 - (1 - level) / 2))
    p, n = found / events, events
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    return max(0.0, (centre - half) / scale), min(1.0, (centre + half) / scale)


def count_interval(count: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Garwood) interval of a Poisson mean from one observed ``count``: chi2.ppf(q, 2k) / 2 is the
    quantile q of a gamma of shape k, ``scipy.special.gammaincinv(k, q)``."""
    from scipy.special import gammaincinv

    tail = (1 - level) / 2
    low = float(gammaincinv(count, tail)) if count else 0.0
    return low, float(gammaincinv(count + 1, 1 - tail))


def summarise(scores: list[FileScore]) -> dict:
    """Totals and metrics over ``scores`` (see the module docstring for each definition)."""
    n_ref = sum(len(s.refs) for s in scores)
    n_det = sum(len(s.ests) for s in scores)
    found = sum(sum(s.found) for s in scores)
    correct = sum(sum(s.correct) for s in scores)
    eb_tp = sum(s.eb_tp for s in scores)
    free_h = sum(s.free_s for s in scores) / 3600
    false = [label for s in scores for label in s.false_labels]
    recall, precision = _ratio(found, n_ref), _ratio(correct, n_det)
    eb_p, eb_r = _ratio(eb_tp, n_det), _ratio(eb_tp, n_ref)
    errors = sorted(x for s in scores for x in s.start_errors)
    by_ebr: dict[str, list[bool]] = {}
    for s in scores:
        for ref, hit in zip(s.refs, s.found):
            if ref.ebr_db is not None:
                by_ebr.setdefault(f"{ref.ebr_db:g}", []).append(hit)
    return {
        "files": len(scores),
        "hours": round(sum(s.duration_s for s in scores) / 3600, 4),
        "reference_events": n_ref,
        "detected_events": n_det,
        "found": found,
        "correct_detections": correct,
        "recall": recall,
        "recall_ci95": recall_interval(found, n_ref),
        "precision": precision,
        "f1": _f1(precision, recall),
        "recall_by_ebr": {
            k: {"events": len(v), "recall": sum(v) / len(v)}
            for k, v in sorted(by_ebr.items(), key=lambda kv: float(kv[0]))
        },
        "eb_true_positives": eb_tp,
        "eb_precision": eb_p,
        "eb_recall": eb_r,
        "eb_f1": _f1(eb_p, eb_r),
        "event_free_hours": round(free_h, 4),
        "false_events": len(false),
        "false_per_hour": len(false) / free_h if free_h > 0 else None,
        "false_per_hour_ci95": tuple(x / free_h for x in count_interval(len(false))) if free_h > 0 else None,
        "top_false_labels": Counter(false).most_common(5),
        "start_within_0_5s": _ratio(sum(abs(x) <= 0.5 for x in errors), len(errors)),
        "start_error_median_s": statistics.median(errors) if errors else None,
    }


def per_file(scores: list[FileScore]) -> list[dict]:
    """Every file's reference events and detections, for the JSON of eval-scenes and replays."""
    return [
        {
            "file": s.name,
            "type": s.type,
            "duration_s": round(s.duration_s, 3),
            "reference": [[r.onset, r.offset, r.label] for r in s.refs],
            "found": s.found,
            "detected": [[e.onset, e.offset, e.label] for e in s.ests],
            "correct": s.correct,
            "false_labels": s.false_labels,
        }
        for s in scores
    ]


def by_label(scores: list[FileScore]) -> dict:
    """Per label: reference events and how many were found (recall), detections and how many were
    right (precision), and false events (detections starting on event-free stretches)."""
    out: dict[str, dict] = {}

    def row(label: str) -> dict:
        return out.setdefault(label, {"events": 0, "found": 0, "detections": 0, "correct": 0, "false_events": 0})

    for s in scores:
        for ref, hit in zip(s.refs, s.found):
            row(ref.label)["events"] += 1
            row(ref.label)["found"] += int(hit)
        for est, ok in zip(s.ests, s.correct):
            row(est.label)["detections"] += 1
            row(est.label)["correct"] += int(ok)
        for label in s.false_labels:
            row(label)["false_events"] += 1
    for m in out.values():
        m["recall"], m["precision"] = _ratio(m["found"], m["events"]), _ratio(m["correct"], m["detections"])
    return dict(sorted(out.items()))


def report(scores: list[FileScore]) -> dict:
    """Overall, per background type, and per label (overall)."""
    kinds = sorted({s.type for s in scores})
    return {
        "overall": summarise(scores),
        "by_type": {k: summarise([s for s in scores if s.type == k]) for k in kinds},
        "by_label": by_label(scores),
    }


def missed_labels_line(result: dict, most: int = 10) -> str:
    """The labels whose events were missed most (share found, fewest first): what to look at first."""
    rows = [(label, m) for label, m in result.get("by_label", {}).items() if m["events"] and m["found"] < m["events"]]
    if not rows:
        return "events found by label: every annotated event was found"
    rows.sort(key=lambda lm: (lm[1]["found"] / lm[1]["events"], -lm[1]["events"], lm[0]))
    shown = ", ".join(f"{label} {m['found']}/{m['events']}" for label, m in rows[:most])
    return (
        f"events found by label ({min(most, len(rows))} of {len(rows)} labels with misses, fewest found first): {shown}"
    )


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def table(result: dict, ebrs: tuple[str, ...] | None = None) -> str:
    """A Markdown table: one row per background type, then all."""
    rows = [*result["by_type"].items(), ("all", result["overall"])]
    ebrs = ebrs or tuple(sorted({k for _, m in rows for k in m["recall_by_ebr"]}, key=float))
    head = (
        ["background", "files", "hours", "events", "recall %", "95% CI"]
        + [f"@{e} dB" for e in ebrs]
        + ["precision %", "F1 %", "EB-F1 %", "start within 0.5 s %", "detections", "free h", "false/h", "95% CI"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in rows:
        ci = m.get("recall_ci95")
        cells = [name, str(m["files"]), f"{m['hours']:.2f}", str(m["reference_events"]), _pct(m["recall"])]
        cells.append("-" if ci is None else f"{100 * ci[0]:.1f}-{100 * ci[1]:.1f}")
        cells += [
            _pct(m["recall_by_ebr"][e]["recall"]) + f" ({m['recall_by_ebr'][e]['events']})"
            if e in m["recall_by_ebr"]
            else "-"
            for e in ebrs
        ]
        fph = m["false_per_hour"]
        cells += [
            _pct(m["precision"]),
            _pct(m["f1"]),
            _pct(m["eb_f1"]),
            _pct(m["start_within_0_5s"]),
            str(m["detected_events"]),
            f"{m['event_free_hours']:.2f}",
            "-" if fph is None else f"{fph:.1f}",
            "-" if m.get("false_per_hour_ci95") is None else "{:.1f}-{:.1f}".format(*m["false_per_hour_ci95"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def false_labels_line(result: dict) -> str:
    """The labels of the false events (detections starting on event-free stretches), overall and per type."""
    overall = result["overall"]["top_false_labels"]
    if not overall:
        return "false events by label: none"
    per_type = [
        f"{kind}: " + ", ".join(f"{label} {n}" for label, n in m["top_false_labels"])
        for kind, m in result["by_type"].items()
        if m["top_false_labels"]
    ]
    return (
        "false events by label (5 most): "
        + ", ".join(f"{label} {n}" for label, n in overall)
        + f" ({'; '.join(per_type)})"
    )


def write_annotations(path: Path, events: list[Event]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["onset", "offset", "event_label"])
        for e in events:
            writer.writerow([f"{e.onset:.3f}", f"{e.offset:.3f}", e.label])
