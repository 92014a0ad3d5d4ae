"""A server's log: one JSON object a line on standard error, for log collectors.

Every record of pet's loggers carries `time` (UTC, ISO 8601), `level`, `logger`,
`message`, the server's name as `server`, and what the call that logged it adds (a call's
method, status code, seconds and refusal reason; a start's port).
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter


def configure(server: str) -> None:
    """Send pet's log records, as JSON lines naming `server`, to standard error."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(
        "{levelname}{name}{message}", style="{", timestamp="time",
        rename_fields={"levelname": "level", "name": "logger"},
        static_fields={"server": server}))
    logger = logging.getLogger("pet")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
