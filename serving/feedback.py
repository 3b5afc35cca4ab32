"""The durable feedback log: every event posted to /feedback is appended here, flushed and
fsync'd before the response, then pushed to the online store. ``xinterest retrain`` ingests it
like any canonical source (the log keeps raw platform user ids, as platform logs do; the lake
never does).

One JSON object per line, in daily files ``WORKDIR/feedback/events-YYYYMMDD.jsonl``; each
event carries an ``event_id`` (given, or a fresh UUID) so that re-ingesting is idempotent.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

FIELDS = ("event_id", "platform", "user_id", "item_id", "action", "value", "text", "ts")


class FeedbackLog:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def append(self, events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Write the events durably (fsync) and return them as written."""
        written = []
        for event in events:
            record = {k: event.get(k) for k in FIELDS}
            record["event_id"] = record["event_id"] or f"fb-{uuid.uuid4().hex}"
            ts = record["ts"] or datetime.now(UTC)
            record["ts"] = ts.isoformat() if isinstance(ts, datetime) else str(ts)
            written.append(record)
        payload = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in written).encode()
        path = self.folder / f"events-{datetime.now(UTC):%Y%m%d}.jsonl"
        with self._lock:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
        return written


def read_log(folder: Path) -> tuple[pd.DataFrame, list[str]]:
    """All logged events as a canonical frame (``ts`` parsed), plus lines that do not parse
    (a torn last line after a crash is reported, not lost)."""
    rows, bad = [], []
    for path in sorted(Path(folder).glob("events-*.jsonl")):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                bad.append(line)
    frame = pd.DataFrame(rows, columns=list(FIELDS))
    return frame, bad
