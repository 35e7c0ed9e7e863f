"""A worker type that is a program (`command:` in its section), run once per task.

The pool builds a CommandWorker for such a group (plugins.load) where it would
import a plugin: it has BaseWorker's shape (factory, setup, handle_task,
teardown), so the worker's loop, its TaskChannel and its settlement code serve
it as they serve Python plugins. handle_task runs in the worker's task thread:
the program's pipes are read there, the hub stays free for heartbeats.

The contract the program sees (docs/03-writing-a-plugin.md, "A plugin in any
language"): the task's body on stdin; a small environment (build_env); exit 0
acks (stdout is the reply when the task has reply_to), 75 (EX_TEMPFAIL) retries,
anything else dead-letters with its stderr's tail. One process per task, in a
process group of its own that dies with the worker (PR_SET_PDEATHSIG) and is
killed whole when the program exits, overruns task_timeout or its stdout cap:
nothing a task starts outlives it, nothing it breaks reaches the next task.
"""
import ctypes
import logging
import os
import pwd
import selectors
import signal
import subprocess
import threading
import time

from taskqueue.broker.deadletters import task_key
from taskqueue.protocol import retries

log = logging.getLogger(__name__)

#: The exit status that asks for a retry (sysexits.h EX_TEMPFAIL).
EX_TEMPFAIL = 75
#: Bytes of stdout kept: the reply. A program that writes more is killed and its task
#: dead-lettered (a reply that size belongs in a store, with its address in the reply).
STDOUT_CAP = 2**20
#: Bytes of stderr kept (the last ones): they go into the dead letter's reason.
STDERR_TAIL = 2048
#: The program's PATH: the system's, never the worker's (a venv's bin, say).
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
#: The program is killed this share of task_timeout (at most TIMEOUT_LEAD_MAX seconds)
#: before the supervisor's own timer kills the worker: SIGKILL on the worker would
#: take its direct child (PDEATHSIG), but not what that child started.
TIMEOUT_LEAD, TIMEOUT_LEAD_MAX = 0.1, 0.5
#: Seconds the task thread waits, once it killed a program at task_timeout, for the
#: supervisor to kill the worker (the timed-out task's way: redelivered, a death
#: counted) before it kills the worker itself.
TIMEOUT_GRACE = 10.0
#: Seconds its pipes are read once the program exited (and its group was killed): only a
#: process that left the group (setsid) can hold them longer, and is not waited for.
DRAIN = 1.0
#: Longest select() wait: a cancelled task's TaskCancelled reaches the thread between two.
WAKE = 0.5
_CHUNK = 65536
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def build_env(header, body, worker_type, home):
    """The program's whole environment: a minimal one, and what says which task it runs.
    `header`: the task's properties. No NUL can reach execve (a publisher's header may
    hold one)."""
    done, _ = retries.read_count(header.headers)
    env = {"PATH": PATH, "LANG": "C.UTF-8", "HOME": home,
           "TASKQUEUE_TASK_ID": task_key(header, body),
           "TASKQUEUE_WORKER_TYPE": worker_type,
           "TASKQUEUE_ATTEMPT": str((done or 0) + 1),
           "TASKQUEUE_REPLY_TO": header.reply_to or "",
           "TASKQUEUE_CONTENT_TYPE": header.content_type or ""}
    return {name: value.replace("\0", "") for name, value in env.items()}


def tail(data, limit=STDERR_TAIL):
    """The last `limit` bytes of `data` as text (bad UTF-8 replaced), stripped; a cut
    mid-text starts with '...'."""
    text = data[-limit:].decode("utf-8", "replace").strip()
    return "..." + text if len(data) > limit else text


def verdict(returncode, stderr, over_cap=False):
    """What a finished program's task comes to: ("ack",), ("retry",) or ("dead", reason).
    `returncode` as Popen gives it (negative: the signal that killed it)."""
    if over_cap:
        return ("dead", f"command wrote more than {STDOUT_CAP} bytes to stdout (its cap); "
                        "killed")
    if returncode == 0:
        return ("ack",)
    if returncode == EX_TEMPFAIL:
        return ("retry",)
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "?"
        why = f"command killed by signal {-returncode} ({name})"
    else:
        why = f"command exited {returncode}"
    said = tail(stderr)
    return ("dead", f"{why}: {said}" if said else why)


class Run:
    """What one run of the program gave."""

    def __init__(self):
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.over_cap = False
        self.timed_out = False
        self.returncode = None

    def keep(self, stream, data):
        if stream == "stdout":
            self.over_cap = self.over_cap or len(self.stdout) + len(data) > STDOUT_CAP
            self.stdout += data[:STDOUT_CAP - len(self.stdout)]
        else:
            self.stderr = (self.stderr + data)[-STDERR_TAIL - 1:]   # one more: cut is seen


def _die_with_worker(worker_pid):
    """In the forked program, before exec: SIGKILL when the worker's task thread ends
    (the worker dying); gone at once if the worker died already."""
    def arm():
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != worker_pid:
            os._exit(127)
    return arm


def run(argv, body, env, timeout=None):
    """Run `argv` with `body` on stdin in a process group of its own; return its Run.
    Whatever is left of its group when it ends (or overruns `timeout` seconds, or its
    stdout cap) is killed with SIGKILL; so is all of it if this thread is interrupted."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd="/", close_fds=True,
                            process_group=0, preexec_fn=_die_with_worker(os.getpid()))
    result, pidfd = Run(), os.pidfd_open(proc.pid)
    try:
        _pump(proc, pidfd, body, result, None if timeout is None else time.monotonic() + timeout)
    finally:
        _kill_group(proc.pid)   # before the reap: the group's id cannot be reused yet
        os.close(pidfd)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if not stream.closed:
                stream.close()
        result.returncode = proc.wait()
    return result


def _pump(proc, pidfd, body, result, deadline):
    """Feed stdin and read stdout and stderr until the program exits and its pipes are
    closed (a grandchild holding them is killed once the program exited)."""
    view, sel = memoryview(body), selectors.DefaultSelector()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        os.set_blocking(stream.fileno(), False)
    if view:
        sel.register(proc.stdin, selectors.EVENT_WRITE, "stdin")
    else:
        proc.stdin.close()
    sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
    sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
    sel.register(pidfd, selectors.EVENT_READ, "exit")
    try:
        while sel.get_map():
            wait = WAKE if deadline is None else min(WAKE, max(0.0, deadline - time.monotonic()))
            for key, _ in sel.select(wait):
                view = _serve(key, sel, proc, view, result)
            exited = pidfd not in {key.fileobj for key in sel.get_map().values()}
            if result.over_cap:
                return
            if exited and deadline is None or exited and deadline - time.monotonic() > DRAIN:
                # Its group is killed: the pipes close at once, unless a process that left
                # the group (setsid) holds them; that one is not waited for long.
                deadline = time.monotonic() + DRAIN
            if deadline is not None and time.monotonic() >= deadline:
                result.timed_out = not exited
                return
    finally:
        sel.close()


def _serve(key, sel, proc, view, result):
    """One ready fd; returns what is left of stdin's body."""
    if key.data == "stdin":
        try:
            view = view[os.write(key.fd, view[:_CHUNK]):]
        except BrokenPipeError:   # it does not read its stdin: its business
            view = view[:0]
        if not view:
            sel.unregister(key.fileobj)
            proc.stdin.close()
    elif key.data == "exit":
        sel.unregister(key.fileobj)
        _kill_group(proc.pid)    # what it left running holds its pipes: gone with the task
    else:
        data = os.read(key.fd, _CHUNK)
        if data:
            result.keep(key.data, data)
        else:
            sel.unregister(key.fileobj)
    return view


def _kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass   # nothing left of it (PermissionError: a setuid program in it, not ours)


class CommandWorker:
    """BaseWorker's shape for a `command:` group: each task runs the program once."""

    def __init__(self, group):
        self.group = group
        self.settings = dict(group.options)
        self.argv = group.command

    @classmethod
    def factory(cls, group):
        return cls(group)

    def setup(self):
        """After the privilege drop: the program runs as this process's user."""
        self.home = pwd.getpwuid(os.getuid()).pw_dir
        log.info("command %s, as uid %d", " ".join(self.argv), os.getuid())

    def teardown(self):
        pass

    def handle_task(self, channel, method, header, body):
        group = self.group
        env = build_env(header, body, group.worker_type, self.home)
        timeout = group.task_timeout
        if timeout is not None:
            timeout -= min(TIMEOUT_LEAD * timeout, TIMEOUT_LEAD_MAX)
        result = run(self.argv, body, env, timeout)
        if result.timed_out:
            return self._timed_out(method)
        outcome = verdict(result.returncode, bytes(result.stderr), result.over_cap)
        if outcome[0] == "ack":
            if header.reply_to:
                channel.reply(bytes(result.stdout))
            channel.basic_ack()
        elif outcome[0] == "retry":
            channel.retry()
        else:
            channel.dead_letter(outcome[1])

    def _timed_out(self, method):
        """Killed at task_timeout: left unsettled for the supervisor, which kills this
        process as it does for a Python task (redelivered, a death counted)."""
        log.error("task (delivery %s): command still running at task_timeout %gs; its "
                  "process group killed; the supervisor replaces this process",
                  method.delivery_tag, self.group.task_timeout)
        threading.Event().wait(TIMEOUT_GRACE)
        log.error("the supervisor did not end this process %gs after task_timeout; "
                  "ending it", TIMEOUT_GRACE)
        os.kill(os.getpid(), signal.SIGKILL)
