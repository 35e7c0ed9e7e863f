"""Where the supervisor leaves the cause of a death, for the worker that gets the task next.

When a worker process dies in the middle of a task, the supervisor counts it in
a small file named after the task (keyed: see Graveyard), with how it ended;
the worker that receives the task once the count reaches the delivery limit
dead-letters it with those facts. A task's deaths are forgotten once it is
settled, and when a task of the same key arrives afresh (a dead letter requeued,
an identical body submitted again): each life of a task gets the whole delivery
limit.
"""
import fcntl
import hashlib
import hmac
import logging
import os
import tempfile

from taskqueue.host import filetrust

log = logging.getLogger(__name__)

#: The graveyard keeps at most this many causes (oldest go first).
GRAVEYARD_SIZE = 1000
#: The graveyards' names (in /run/taskqueue, or a temp directory). Versions
#: before the lock named theirs "taskqueue-graveyard-" and held no lock: a sweep
#: must never take a running one of those (an upgrade), so the name changed.
GRAVEYARD_PREFIX = "taskqueue-graves-"


class Graveyard:
    """Causes of death by task, in a directory the supervisor owns and children read.

    It lives where only taskqueue writes (graveyard_parent: root's [supervisor]
    status_dir, /run/taskqueue; else a private runtime or temp directory), mode
    0700. A root supervisor whose children may run as other users makes it 0711
    instead: nobody may list it, and its files (0644) are named by an HMAC of the
    task key under a secret that only the supervisor and the children it forks
    hold, so only they can find one. Only the supervisor writes in it.

    A graveyard is locked (flock on its directory) for as long as its supervisor
    or one of the children that inherited the lock lives: the kernel releases
    the lock of a killed process, so a graveyard nobody holds is stale, and the
    next supervisor to start removes it (a SIGKILLed supervisor cannot)."""

    def __init__(self, path, lock_fd=None, shared=False):
        self.path = path
        self._lock_fd = lock_fd
        self._file_mode = 0o644 if shared else 0o600
        #: Names the files: inherited by the children, known to nobody else.
        self._secret = os.urandom(32)
        # The files this supervisor wrote and has not removed: it is the only writer,
        # so forget() of any other key (nearly every settled task) needs no system call.
        self._recorded = set()

    @classmethod
    def create(cls, parent=None, owner=None, shared=False, sweep_also=()):
        """A new graveyard in `parent` (default: graveyard_parent()), locked; the stale
        ones there that this user (or a uid of `sweep_also`) owns are removed first.
        `owner`: (uid, gid) to give it to, the user a root supervisor is about to
        become. `shared`: children of other users must read it (mode 0711, see the
        class)."""
        parent = parent or graveyard_parent()
        sweep_stale(parent, owners={os.geteuid(), *sweep_also})
        while True:
            path = tempfile.mkdtemp(prefix=GRAVEYARD_PREFIX, dir=parent)   # 0700
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            fcntl.flock(fd, fcntl.LOCK_EX)   # waits while another sweep holds it
            # A sweep that took it between mkdtemp and flock removed it: make another.
            try:
                if os.path.samestat(os.lstat(path), os.fstat(fd)):
                    if owner:
                        os.fchown(fd, *owner)
                    os.fchmod(fd, 0o711 if shared else 0o700)
                    return cls(path, fd, shared)
            except FileNotFoundError:
                pass
            os.close(fd)

    def remove(self):
        """Supervisor side, when it stops: the graveyard and its lock are gone. (A
        supervisor that gave up root cannot remove the directory from root's
        /run/taskqueue: emptied and unlocked, the next one to start sweeps it.)"""
        _empty_and_remove(os.path.dirname(self.path), os.path.basename(self.path))
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _file(self, key):
        name = hmac.new(self._secret, key.encode(), hashlib.sha256).hexdigest()[:40]
        return os.path.join(self.path, name)

    def record(self, key, cause):
        """Supervisor side: one more death while handling `key`, and how it ended."""
        deaths, _ = self.deaths(key)
        path = self._file(key)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     self._file_mode)
        with open(fd, "w") as f:
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
        if not self._recorded:   # the common case, once per task: no HMAC to compute
            return
        path = self._file(key)
        if path not in self._recorded:
            return
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self._recorded.discard(path)   # unlink failed otherwise: the next forget tries again

    def handoff(self):
        """What a child that execs (childexec.py) needs to read this graveyard: its
        path and the secret that names its files; see adopt()."""
        return self.path, self._secret

    @classmethod
    def adopt(cls, handoff):
        """Child side, in a fresh interpreter: the graveyard handoff() described
        (reads only; the lock stays with the supervisor)."""
        path, secret = handoff
        graveyard = cls(path)
        graveyard._secret = secret
        return graveyard

    def deaths(self, key):
        """Child side: (how many processes died handling `key`, how the last one ended)."""
        try:
            with open(self._file(key)) as f:
                count, _, cause = f.read().partition("\n")
            return int(count), cause
        except (OSError, ValueError):
            return 0, None


def graveyard_parent(status_dir=None):
    """Where a supervisor makes its graveyard: `status_dir` ([supervisor] status_dir,
    root's /run/taskqueue) when it is, or can be made, a directory of this user's or
    root's that no one else may write; else $XDG_RUNTIME_DIR when it is such a
    directory (a user's own supervisor); else the temp directory, where mkdtemp makes
    it private (0700, a name nobody can guess) and the sweep takes only this user's."""
    if status_dir:
        try:
            filetrust.safe_directory(status_dir)
            return status_dir
        except OSError:
            pass
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime) and os.path.isdir(runtime):
        try:
            filetrust.safe_directory(runtime)
            return runtime
        except OSError:
            pass
    return tempfile.gettempdir()


def sweep_stale(parent, owners=None):
    """Remove the graveyards in `parent` whose lock nobody holds (their supervisor and
    its children are gone) and whose owner is in `owners` (default: this user);
    return their paths. Anything else there is left alone: another user's directory,
    a link, a file, a tree too deep to be one of ours. Nothing it finds stops it:
    a graveyard it cannot remove is logged and left."""
    owners = owners or {os.geteuid()}
    removed = []
    try:
        names = [name for name in os.listdir(parent) if name.startswith(GRAVEYARD_PREFIX)]
    except OSError as exc:
        log.warning("cannot look for stale graveyards in %s: %s", parent, exc.strerror or exc)
        return removed
    for name in names:
        try:
            if _sweep_one(parent, name, owners):
                removed.append(os.path.join(parent, name))
        except Exception as exc:   # whatever it found: the supervisor starts all the same
            log.warning("stale graveyard %s left alone: %s", os.path.join(parent, name),
                        getattr(exc, "strerror", None) or exc)
    return removed


def _sweep_one(parent, name, owners):
    """Remove one stale graveyard of `owners`; True if it did."""
    path = os.path.join(parent, name)
    try:
        # O_NONBLOCK: a FIFO planted under the name never blocks the start.
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                     | os.O_NONBLOCK)
    except OSError:
        return False    # gone meanwhile, a link, not a directory, not ours to read
    try:
        st = os.fstat(fd)
        if st.st_uid not in owners:
            return False    # another user's: never ours to remove
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False    # held: its supervisor lives
        # The one we locked is the one at `path` (not swapped meanwhile).
        if not os.path.samestat(os.lstat(path), st):
            return False
        return _empty_and_remove(parent, name, fd)
    finally:
        os.close(fd)


def _empty_and_remove(parent, name, fd=None):
    """Unlink the entries of the graveyard `parent`/`name` (never following a link,
    never descending: a graveyard holds files only) and remove it; True if it is gone.
    A directory found inside is removed only if empty; if one is not, the graveyard
    stays (logged by the caller)."""
    path = os.path.join(parent, name)
    own = fd is None
    if own:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
    try:
        for entry in os.listdir(fd):
            try:
                os.unlink(entry, dir_fd=fd)
            except IsADirectoryError:
                try:
                    os.rmdir(entry, dir_fd=fd)
                except OSError:
                    pass     # not empty: never descended into; the rmdir below says so
            except FileNotFoundError:
                pass
    finally:
        if own:
            os.close(fd)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        if own:
            return False   # removing our own: a dropped supervisor may not (see remove)
        raise
    return True
