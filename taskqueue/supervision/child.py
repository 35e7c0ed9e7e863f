"""The one post-fork routine every child runs, and how it leaves.

A forked child inherits the supervisor's greenlets, gevent signal handlers,
child watchers and fds: seen by experiment, the parent's greenlets kept running
in the child, its SIGTERM handler ran there instead of dying, and an inherited
pika socket stole the parent's deliveries. `run()`
neutralises each of them in one place, drops privileges, arranges to die
with the supervisor, runs the child's target and always ends through
os._exit() with one of the codes of lifecycle.EXITS.
"""
import ctypes
import logging
import os
import pwd
import signal
import sys

import gevent
import gevent.signal
from gevent.event import Event

# childexec before any privilege drop: the child may not be able to import it after.
from taskqueue.broker import failover
from taskqueue.errors import PluginError, SessionClosed, TopologyError, UserSwitchError
from taskqueue.host import logs, tls
from taskqueue.supervision import childexec
from taskqueue.supervision.graveyard import Graveyard
from taskqueue.supervision.lifecycle import (EXIT_CONNECTION, EXIT_ERROR, EXIT_PLUGIN_LOAD,
                                             EXIT_TOPOLOGY, EXIT_USER)

log = logging.getLogger(__name__)

#: Signals the supervisor handles; blocked across fork() so that a child never
#: runs the supervisor's handler for one (it would swallow a SIGTERM).
SUPERVISOR_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: Signals that ask a child to stop after its current task.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_PR_SET_PDEATHSIG = 1
# Loaded before any fork: after a privilege drop the child may not be able to.
_libc = ctypes.CDLL(None, use_errno=True)


#: Failures a child explains in one line, and the exit code that tells the supervisor
#: which (lifecycle.EXITS says what each means and what follows it).
EXPLAINED = ((PluginError, EXIT_PLUGIN_LOAD), (UserSwitchError, EXIT_USER),
             (SessionClosed, EXIT_CONNECTION), (TopologyError, EXIT_TOPOLOGY))


#: Longest detail of a broker report: one write stays atomic (PIPE_BUF).
BROKER_DETAIL_MAX = 400
#: Marks a `busy` report of a task's first delivery.
FIRST_DELIVERY = "first"


class ChildContext:
    """What a child's target gets: a stop request, and a line to the supervisor.

    Reports are lines `<event> [<detail>]` on a pipe of this child's own
    (reports.py: the supervisor knows whose pipe it reads, so no pid is
    written); each write is less than PIPE_BUF bytes, so that a line never
    arrives in pieces. A finished task's `done` line is
    held back and goes out with the next `busy` (or `flush()`): one write and
    one supervisor wake-up per task instead of two, in a stream of short tasks.
    """

    def __init__(self, name, report_fd, graveyard, route=None):
        self.name = name
        self.stopping = Event()
        #: Where the supervisor records how processes died in the middle of a task.
        self.graveyard = graveyard
        self._report_fd = report_fd
        self._held = ""     # a `done` line not written yet
        #: failover.Route: where this child connects first; it tells the supervisor
        #: which broker it reached (`broker`), could not reach (`unreachable`), lost (`lost`).
        self.route = route or failover.Route()
        self.route.report = self.report_broker

    def report_broker(self, event, detail):
        """A broker event of failover.Route, as one short line (PIPE_BUF)."""
        self._report(event, " ".join(detail.split())[:BROKER_DETAIL_MAX])

    def ready(self):
        """Consuming: the supervisor counts this child as started."""
        self._report("ready")

    def busy(self, task_key, redelivered=True):
        """A task started (deadletter.task_key names it: one word, printable); the
        supervisor times it when the group has task_timeout. A first delivery
        (not `redelivered`) cannot follow a death: the supervisor forgets the
        deaths of an earlier task of that key."""
        self._report("busy", task_key if redelivered else f"{task_key} {FIRST_DELIVERY}")

    def done(self, outcome, seconds):
        """The task is settled (outcome: one of lifecycle.TASK_OUTCOMES) after `seconds`
        of handling; held until the next report or flush()."""
        self._held = f"done {outcome} {seconds:.6f}\n"

    @property
    def holding(self):
        return bool(self._held)

    def flush(self):
        """Write a held `done` now: the child is about to wait or to exit."""
        if self._held:
            self._write(self._held)

    def _report(self, event, detail=""):
        self._write(f"{self._held}{event} {detail}\n")

    def _write(self, text):
        self._held = ""
        os.write(self._report_fd, text.encode())


def run(name, kind, user, target, forget_inherited, report_fd, parent_pid, graveyard, route=None):
    """Run `target(ctx)` as the child `name` of kind `kind` (ChildSpec.kind); never returns.
    A child that switches to another user execs a fresh interpreter first (childexec.py)."""
    def body():
        ctx = ChildContext(name, report_fd, graveyard, route)
        _take_over_signals(forget_inherited, ctx.stopping.set)
        logs.set_identity(kind, name)
        switched = drop_privileges(user) if user else False
        # After the privilege drop: changing uid/gid clears PDEATHSIG (prctl(2)); exec keeps it.
        die_with_parent(parent_pid)
        if switched:   # it must not keep the supervisor's memory: other groups' settings
            try:
                childexec.replace_process(name, kind, target, report_fd, parent_pid, graveyard,
                                          ctx.route)
            except OSError as exc:   # the interpreter, or its venv, not executable by `user`
                raise UserSwitchError(f"cannot run as user {user!r}: cannot start {sys.executable} "
                                      f"as that user: {exc.strerror or exc}") from None
        # Only now: a stop signal sent before the exec stays pending across it.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SUPERVISOR_SIGNALS)
        return target(ctx)
    _run_to_exit(name, body)


def serve(name, kind, target, report_fd, parent_pid, graveyard, route, tls_contexts):
    """The same child, in the fresh interpreter childexec.py started; never returns.
    `graveyard`: what Graveyard.handoff() gave, or None."""
    def body():
        ctx = ChildContext(name, report_fd, graveyard and Graveyard.adopt(graveyard), route)
        logs.set_identity(kind, name)
        for key, contents in tls_contexts:
            tls.adopt(key, contents)
        for sig in STOP_SIGNALS:
            gevent.signal_handler(sig, ctx.stopping.set)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SUPERVISOR_SIGNALS)   # blocked across exec
        if os.getppid() != parent_pid:   # the supervisor died before exec: PDEATHSIG missed it
            return EXIT_ERROR
        return target(ctx)
    _run_to_exit(name, body)


def _run_to_exit(name, body):
    """Run body() and leave through os._exit() with its code, or the code of what it raised."""
    code = EXIT_ERROR
    try:
        code = body()
    except BaseException as exc:
        code = next((code for kind, code in EXPLAINED if isinstance(exc, kind)), EXIT_ERROR)
        if code == EXIT_ERROR:
            log.exception("%s failed", name)
        else:
            log.error("%s", exc)  # the message says it all: no traceback
    finally:
        logging.shutdown()
        os._exit(code)


def _take_over_signals(forget_inherited, on_stop):
    """Replace the supervisor's signal handling with the child's own.

    The supervisor blocked its signals before forking; a stop signal that
    arrived since then is pending and reaches the child's handler once the
    caller lifts the mask (after an exec, if the child execs: the new
    interpreter's handler gets it).
    """
    forget_inherited()  # the supervisor's greenlets, signal handles and fds
    for sig in SUPERVISOR_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    # Stop reaping every child: a plugin's own subprocesses must keep their
    # exit codes (notes §2.3 pitfall 5).
    gevent.signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for sig in STOP_SIGNALS:
        gevent.signal_handler(sig, on_stop)


def drop_privileges(user):
    """Become `user` for good: supplementary groups, gid, then uid; HOME and USER follow.
    True when that changed the uid (False: this process ran as `user` already)."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise UserSwitchError(f"cannot run as user {user!r}: no such user") from None
    switched = os.getuid() != pw.pw_uid
    if switched:
        try:
            # initgroups first: without it the child keeps root's groups (notes §3).
            os.initgroups(pw.pw_name, pw.pw_gid)
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
        except PermissionError as exc:
            raise UserSwitchError(f"cannot run as user {user!r}: {exc.strerror} "
                                  f"(the supervisor runs as uid {os.getuid()}, not root)") from None
    os.environ.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)
    return switched


def die_with_parent(parent_pid):
    """SIGKILL when `parent_pid` (our parent) ends; exit now if it ended already."""
    if _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    if os.getppid() != parent_pid:  # the supervisor died before prctl took effect
        os._exit(EXIT_ERROR)
