"""The fresh interpreter a user-switching child execs (childexec.py says why and what it gets).

Its own module, so that child.py (which execs it) and this entry point (which
serves the child) do not import each other.
"""
import functools
import os
import pickle
import sys

from taskqueue import redact
from taskqueue.host import logs
from taskqueue.supervision import childexec


def main(argv=None):
    """The fresh interpreter: read the payload, set up, serve; never returns."""
    from taskqueue.supervision import child  # gevent and the rest, after the payload is read
    fd = int((argv or sys.argv)[1])
    with os.fdopen(fd, "rb") as f:
        payload = pickle.loads(f.read())
    logs.adopt(payload["logging"])
    for secret in payload["secrets"]:
        redact.remember(secret)
    func, args, keywords = payload["target"]
    target = functools.partial(func, *(childexec.restored(arg) for arg in args), **keywords)
    child.serve(payload["name"], payload["kind"], target, payload["report_fd"],
                payload["parent_pid"], payload["graveyard"], payload["route"], payload["tls"])


if __name__ == "__main__":
    main()
