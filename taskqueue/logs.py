"""Logging set-up: one line per event, with the component and pid in each.

The identity ("supervisor", "dispatcher#0", "worker1/bifh1#2") is
process-wide: a child sets it once, right after the fork. `auto` sends lines
to syslog when /dev/log exists and stderr is not a terminal (a daemon under
an init script), else to stderr; once, never to both.
"""
import logging
import logging.handlers
import os
import sys

#: Where syslog listens on Debian.
SYSLOG_SOCKET = "/dev/log"
TARGETS = ("auto", "stderr", "syslog")

_identity = "taskqueue"


class _IdentityFilter(logging.Filter):
    def filter(self, record):
        record.identity = _identity
        return True


def setup(level=logging.INFO, target="auto", stream=None):
    stream = stream or sys.stderr
    handlers = []
    if target == "auto":
        target = "stderr" if _is_terminal(stream) or not os.path.exists(SYSLOG_SOCKET) else "syslog"
    if target == "stderr":
        handlers.append(_stderr_handler(stream))
    if target == "syslog" and os.path.exists(SYSLOG_SOCKET):
        handler = logging.handlers.SysLogHandler(
            SYSLOG_SOCKET, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        handler.setFormatter(logging.Formatter(
            "taskqueue[%(process)d]: %(identity)s %(levelname)s: %(message)s"))
        handlers.append(handler)
    if not handlers:  # syslog asked for where there is none: keep the lines somewhere
        handlers.append(_stderr_handler(stream))
    root = logging.getLogger()
    for handler in handlers:
        handler.addFilter(_IdentityFilter())
    root.handlers[:] = handlers
    root.setLevel(level)
    # pika logs every connection detail at INFO; keep its warnings only.
    logging.getLogger("pika").setLevel(logging.WARNING)


def _stderr_handler(stream):
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s taskqueue[%(process)d] %(identity)s %(levelname)s: %(message)s"))
    return handler


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def set_identity(identity):
    global _identity
    _identity = identity
