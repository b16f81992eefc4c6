"""Structured JSON log lines on stdout, one object per line.

Only explicitly named fields are written; callers pass ids, reasons and outcomes, never a
password, token or hash. `json.dumps` escapes newlines, so a field cannot forge a log line.
"""

from __future__ import annotations

import contextvars
import json
import sys
import time
from typing import Any, TextIO

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class JsonLog:
    def __init__(
        self, level: str = "info", access: bool = True, stream: TextIO | None = None
    ) -> None:
        self.threshold = LEVELS.get(level.lower(), 20)
        self.access = access
        self.stream = stream

    def emit(self, level: str, event: str, **fields: Any) -> None:
        if LEVELS[level] < self.threshold:
            return
        record = {"ts": round(time.time(), 3), "level": level, "event": event}
        request_id = REQUEST_ID.get()
        if request_id:
            record["request_id"] = request_id
        record.update(fields)
        line = json.dumps(record, default=str, separators=(",", ":")) + "\n"
        (self.stream or sys.stdout).write(line)

    def request_line(
        self, request_id: str, method: str, route: str, status: int, ms: float
    ) -> None:
        """The per-request line, written without json.dumps: every field is already safe JSON
        (a validated request id, an HTTP method token, a known route name, numbers), and
        this runs once per request."""
        if self.threshold > 20:
            return
        rid = f'"request_id":"{request_id}",' if request_id else ""
        (self.stream or sys.stdout).write(
            f'{{"ts":{round(time.time(), 3)},"level":"info","event":"request",{rid}'
            f'"method":"{method}","route":"{route}","status":{status},"ms":{ms}}}\n'
        )

    def info(self, event: str, **fields: Any) -> None:
        self.emit("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.emit("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.emit("error", event, **fields)
