"""Logging set-up: one line per event, with the component and pid in each.

The identity ("supervisor", "dispatcher#0", "worker1/bifh1#2") is
process-wide: a child sets it once, right after the fork.
"""
import logging
import sys

_identity = "taskqueue"


class _IdentityFilter(logging.Filter):
    def filter(self, record):
        record.identity = _identity
        return True


def setup(level=logging.INFO, stream=None):
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_IdentityFilter())
    handler.setFormatter(logging.Formatter(
        "%(asctime)s taskqueue[%(process)d] %(identity)s %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pika logs every connection detail at INFO; keep its warnings only.
    logging.getLogger("pika").setLevel(logging.WARNING)


def set_identity(identity):
    global _identity
    _identity = identity
