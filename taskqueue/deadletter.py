"""What a dead letter carries, and where the supervisor leaves the cause of a death.

A message taskqueue dead-letters itself keeps its body and properties and
gains headers that say why. When a worker process dies in the middle of a
task, the supervisor counts it in a small file named after the task, with
how it ended (`Graveyard`); the worker that receives the task once the
count reaches the delivery limit dead-letters it with those facts. A task's
deaths are forgotten once it is settled, and when a task of the same key
arrives afresh (a dead letter requeued, an identical body submitted again):
each life of a task gets the whole delivery limit.
"""
import fcntl
import hashlib
import os
import shutil
import tempfile
import time

from . import amqp, fielddecode, inbound, redact, topology

REASON_HEADER = "x-taskqueue-reason"
SOURCE_HEADER = "x-taskqueue-queue"
#: A message whose headers were not decoded (fielddecode.py) keeps their bytes here.
RAW_HEADERS = "x-taskqueue-raw-headers"
#: At most this many of those bytes (a table refused for its size is bigger), so that the
#: dead letter's own table, with the reason, stays within fielddecode.MAX_TABLE_BYTES and
#: `taskqueue dead list` reads it.
MAX_RAW_KEPT = 60 * 1024
#: Headers the broker set on a message for its own queue; a copy starts afresh.
BROKER_HEADERS = ("x-delivery-count",)
#: The graveyard keeps at most this many causes (oldest go first).
GRAVEYARD_SIZE = 1000
#: The graveyards' names in the temp directory ($TMPDIR, else /tmp). Versions
#: before the lock named theirs "taskqueue-graveyard-" and held no lock: a sweep
#: must never take a running one of those (an upgrade), so the name changed.
GRAVEYARD_PREFIX = "taskqueue-graves-"


def without_broker_headers(headers):
    return {k: v for k, v in headers.items() if k not in BROKER_HEADERS}


def dead_properties(props, reason, queue=topology.TASK_QUEUE, **details):
    """The message's properties, persistent, with the reason and where it came from;
    `details` become more `x-taskqueue-<name>` headers. Headers that were not decoded
    are kept as their bytes (RAW_HEADERS); the dead-letter headers the message had
    already (a publisher's, inbound.py) are not."""
    out = amqp.copy_properties(props)
    out.delivery_mode = amqp.PERSISTENT
    undecoded = props.headers if isinstance(props.headers, fielddecode.UndecodedTable) else None
    out.headers = amqp.amqp_safe(inbound.without_forged(
        without_broker_headers(props.headers or {})))
    if undecoded is not None:
        out.headers[RAW_HEADERS] = undecoded.raw[:MAX_RAW_KEPT]
        if len(undecoded.raw) > MAX_RAW_KEPT:
            reason += f" (the first {MAX_RAW_KEPT} of their {len(undecoded.raw)} bytes kept)"
    out.headers[REASON_HEADER] = redact.redact(reason)   # a plugin's error may quote anything
    out.headers[SOURCE_HEADER] = queue
    out.headers["x-taskqueue-dead-at"] = int(time.time())
    for name, value in details.items():
        out.headers[f"x-taskqueue-{name.replace('_', '-')}"] = (
            redact.redact(value) if isinstance(value, str) else value)
    return out


def task_key(props, body):
    """What names a task between processes: its message id (printable, no spaces,
    200 characters at most: it travels in one line of the report pipe), else a
    digest of its body."""
    if props.message_id:
        return "".join(c if c.isprintable() and not c.isspace() else "?"
                       for c in props.message_id[:200])
    return "sha1-" + hashlib.sha1(body).hexdigest()


class Graveyard:
    """Causes of death by task, in a directory the supervisor owns and children read.

    A graveyard is locked (flock on its directory) for as long as its supervisor
    or one of the children that inherited the lock lives: the kernel releases
    the lock of a killed process, so a graveyard nobody holds is stale, and the
    next supervisor to start removes it (a SIGKILLed supervisor cannot)."""

    def __init__(self, path, lock_fd=None):
        self.path = path
        self._lock_fd = lock_fd
        # The files this supervisor wrote and has not removed: it is the only writer,
        # so forget() of any other key (nearly every settled task) needs no system call.
        self._recorded = set()

    @classmethod
    def create(cls, parent=None):
        """A new graveyard in `parent` (default: the temp directory), readable by the
        children of every user, locked; stale ones there are removed first."""
        parent = parent or tempfile.gettempdir()
        sweep_stale(parent)
        while True:
            path = tempfile.mkdtemp(prefix=GRAVEYARD_PREFIX, dir=parent)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fcntl.flock(fd, fcntl.LOCK_EX)   # waits while another sweep holds it
            # A sweep that took it between mkdtemp and flock removed it: make another.
            try:
                if os.path.samestat(os.stat(path), os.fstat(fd)):
                    os.chmod(path, 0o755)
                    return cls(path, fd)
            except FileNotFoundError:
                pass
            os.close(fd)

    def remove(self):
        """Supervisor side, when it stops: the graveyard and its lock are gone."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _file(self, key):
        return os.path.join(self.path, hashlib.sha1(key.encode()).hexdigest())

    def record(self, key, cause):
        """Supervisor side: one more death while handling `key`, and how it ended."""
        deaths, _ = self.deaths(key)
        path = self._file(key)
        with open(path, "w") as f:
            f.write(f"{deaths + 1}\n{cause}")
        self._recorded.add(path)
        names = os.listdir(self.path)
        if len(names) > GRAVEYARD_SIZE:
            oldest = sorted(names, key=lambda n: os.stat(os.path.join(self.path, n)).st_mtime)
            for name in oldest[:len(names) - GRAVEYARD_SIZE]:
                os.unlink(os.path.join(self.path, name))
                self._recorded.discard(os.path.join(self.path, name))

    def forget(self, key):
        """Supervisor side: `key` was settled, or arrived afresh; its deaths no longer count."""
        path = self._file(key)
        if path not in self._recorded:
            return
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self._recorded.discard(path)   # not when unlink failed otherwise: the next forget tries again

    def deaths(self, key):
        """Child side: (how many processes died handling `key`, how the last one ended)."""
        try:
            with open(self._file(key)) as f:
                count, _, cause = f.read().partition("\n")
            return int(count), cause
        except (OSError, ValueError):
            return 0, None


def sweep_stale(parent):
    """Remove the graveyards in `parent` whose lock nobody holds (their supervisor
    and its children are gone); return their paths. One this user may not remove
    (another user's, in a sticky /tmp) is left alone."""
    removed = []
    for name in os.listdir(parent):
        path = os.path.join(parent, name)
        if not name.startswith(GRAVEYARD_PREFIX):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue    # gone meanwhile, not a directory, not ours to read
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)    # held: its supervisor lives
            continue
        try:
            shutil.rmtree(path)
            removed.append(path)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed
