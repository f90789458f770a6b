# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The provisioner service's log: one JSON object per line, on standard error or in ``logfile``.

Every line has ``time`` (UTC, milliseconds), ``level``, ``logger`` and ``msg``; a line about one node's outcome
adds ``event: "node"`` and the fields a log pipeline filters on (``identity``, ``outcome``, ``reason``,
``duration``, ``instance``...). Fields are passed as ``extra={"fields": {...}}``. ``loglevel`` takes Choria's
names: ``trace`` is below ``debug``, ``fatal`` is ``critical``. A ``logfile`` is reopened when logrotate moves
it (``WatchedFileHandler``).
"""

from __future__ import annotations

import datetime
import json
import logging
import logging.handlers
import sys
from typing import Optional

TRACE = 5
LEVELS = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
}
LEVEL_NAMES = {TRACE: "trace", logging.WARNING: "warn", logging.CRITICAL: "fatal"}
SERVICE_LOGGER = "zeroinit"


class JsonLineFormatter(logging.Formatter):
    """A record as one line of JSON: time, level, logger, msg, the record's ``fields``, and any exception."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        line = {
            "time": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
            "level": LEVEL_NAMES.get(record.levelno, record.levelname.lower()),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                line.setdefault(key, value)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


def configure_logging(level: str = "info", logfile: str = "", stream=None) -> logging.Handler:
    """Send the ``zeroinit`` loggers to ``logfile`` (or ``stream``, default stderr) as JSON lines at ``level``."""
    logging.addLevelName(TRACE, "TRACE")
    handler: logging.Handler
    if logfile:
        handler = logging.handlers.WatchedFileHandler(logfile, encoding="utf-8")
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    logger = logging.getLogger(SERVICE_LOGGER)
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)
    logger.setLevel(LEVELS.get(level, logging.INFO))
    logger.propagate = False
    return handler


def log_fields(**fields: Optional[object]) -> dict:
    """``extra=`` for a logging call that adds ``fields`` to the JSON line (None values left out)."""
    return {"fields": {key: value for key, value in fields.items() if value is not None}}
