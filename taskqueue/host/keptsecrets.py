"""What each secret file gave while taskqueue could read it, for the reloads that
come after it gave up root.

The packaged daemons start as root, read the config's secret files
([amqp] password_file, tls_key_file: root's, mode 0600), then run as the user
taskqueue. A reload (SIGHUP, the dpkg trigger of a new plugin) reads the config
again as that user, who cannot read those files: it keeps what each gave at
start, by path, and says so once in the log. A path it never read (the config
now names another file) is refused as before: nothing was kept for it.
"""
import errno
import logging
import os

log = logging.getLogger("taskqueue")

#: {what: (value, euid that read it)}; `what` is a path or a tuple of paths.
_kept = {}
#: What the log was told about already (once each).
_told = set()


def denied(exc):
    """True when `exc` says the file could not be read for lack of permission."""
    return (isinstance(exc, PermissionError)
            or getattr(exc, "errno", None) in (errno.EACCES, errno.EPERM)
            or getattr(exc, "denied", False))


def read(what, reader, describe=None):
    """reader() -> value, remembered under `what`. When it fails for lack of permission
    and this process read `what` as another user (before its privilege drop), the value
    read then, with one warning in the log; else reader()'s exception."""
    try:
        value = reader()
    except Exception as exc:
        kept = _kept.get(what)
        if kept is None or kept[1] == os.geteuid() or not denied(exc):
            raise
        if what not in _told:
            _told.add(what)
            log.warning("%s: cannot read it as uid %d (taskqueue gave up root after it "
                        "started); keeping what it held at start: a change to it applies "
                        "when taskqueue restarts", describe or what, os.geteuid())
        return kept[0]
    _kept[what] = (value, os.geteuid())
    return value


def dropped():
    """True when this process read a secret file as another user than it runs as now."""
    return any(euid != os.geteuid() for _, euid in _kept.values())
