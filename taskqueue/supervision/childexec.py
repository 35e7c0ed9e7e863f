"""A child that runs as another user than its supervisor starts a fresh interpreter.

A forked child is a copy of the supervisor: it holds the whole config, every
group's options included, and a process can read its own memory. That is no
news to a child that keeps the supervisor's user (it can read the config
anyway), so those stay forked: no cost to their restarts. A child that
switches to another user must hold only what is its own. So once it has
dropped its privileges (and set PR_SET_PDEATHSIG, which survives exec), it
execs `python -m taskqueue.supervision.childmain` and hands the new interpreter, in a
memory-only file (memfd), only:

- its name, kind, route, the graveyard's path and the secret naming its files
  (graveyard.Graveyard.handoff), and the supervisor's pid;
- its target with the settings of its own group (a worker: its WorkerGroup
  and [amqp]; the dispatcher: [dispatcher] and [amqp]);
- the broker passwords to hide from log lines (redact), how to log;
- the contents of the [amqp] TLS files it needs (it may not read them), each
  handed to OpenSSL in a memfd of its own (tls.adopt).

Between the privilege drop and the exec the process still holds the whole
config, but no plugin code has run yet, and the kernel made it non-dumpable
when its uid changed: its new user cannot read its memory through /proc. The
fds that survive exec are exactly: 0-2, the log file, the report pipe and the
memfd (not the graveyard's lock: the supervisor holds it, and these children
die with it). The new interpreter runs the same post-fork routine's tail
(child.serve): signals, the check that the supervisor lives, the target,
an exit code of lifecycle.EXITS.
"""
import dataclasses
import os
import pickle
import signal
import sys
from types import MappingProxyType

from taskqueue import redact
from taskqueue.host import logs, tls
from taskqueue.host.config import AmqpSettings, WorkerGroup

#: How the child's interpreter is started: no user site-packages (-s), nothing from
#: the working directory or the script's (-P: the supervisor may run in a directory
#: others can write), the same interpreter and venv as the supervisor.
PYTHON_FLAGS = ("-s", "-P") if sys.version_info >= (3, 11) else ("-s",)


def replace_process(name, kind, target, report_fd, parent_pid, graveyard, route):
    """In a forked child that switched users: exec a fresh interpreter that runs
    `target` with nothing but what the payload holds. Never returns (raises OSError
    when the exec fails: the child then exits with EXIT_ERROR, said in its log)."""
    how_to_log = logs.handoff()
    payload = {
        "name": name, "kind": kind, "target": _portable(target), "report_fd": report_fd,
        "parent_pid": parent_pid, "graveyard": graveyard and graveyard.handoff(),
        "route": dataclasses.replace(route, report=None) if route is not None else None,
        "logging": how_to_log, "secrets": sorted(redact._secrets),
        "tls": _tls_of(target),
    }
    fd = os.memfd_create(f"taskqueue-{name}", 0)   # inherited: no MFD_CLOEXEC
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    keep = {0, 1, 2, fd, report_fd} | ({how_to_log[2]} if how_to_log[1] == "fd" else set())
    for kept in keep:
        os.set_inheritable(kept, True)
    # Signals stay blocked until the new interpreter handles them (the mask survives exec).
    signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
    _close_all_but(keep)
    os.execv(sys.executable, [sys.executable, *PYTHON_FLAGS, "-m",
                              "taskqueue.supervision.childmain", str(fd)])


def _close_all_but(keep):
    """Close every fd but `keep`: most are close-on-exec already, not all (an fd the
    supervisor inherited). /proc/self/fd is not ours to list after the privilege drop."""
    start = 3
    for fd in sorted(keep):
        if fd >= start:
            os.closerange(start, fd)
            start = fd + 1
    os.closerange(start, os.sysconf("SC_OPEN_MAX"))


def _portable(target):
    """(function, args, keywords) of a functools.partial target, picklable: a group's
    options (a read-only mapping) as a dict."""
    return (target.func, tuple(_plain(arg) for arg in target.args), dict(target.keywords))


def _plain(value):
    if isinstance(value, WorkerGroup):
        return dataclasses.replace(value, options=dict(value.options))
    return value


def restored(value):
    if isinstance(value, WorkerGroup):
        return dataclasses.replace(value, options=MappingProxyType(dict(value.options)))
    return value


def _tls_of(target):
    """[(key, contents)] of the TLS contexts the target's [amqp] settings use."""
    found = []
    for arg in target.args:
        if isinstance(arg, AmqpSettings):
            key = (arg.tls_ca_file, arg.tls_cert_file, arg.tls_key_file)
            contents = tls.pems(*key)
            if contents is not None:
                found.append((key, contents))
    return found
