"""Logging set-up: one event per line, each naming who logged it and about what.

    2026-11-27 05:09:01,234 taskqueue[1241] worker worker2/bifh1#0 task=1f3a INFO: text

After the pid come the component (supervisor, dispatcher, worker), the
child (`<type>[/<subgroup>]#<slot>`, `dispatcher#<slot>`) and, while a
worker handles a task or the dispatcher logs about one message, `task=` and
its message id, then `trace=` and its trace id when it carries a valid W3C
traceparent (protocol/tracecontext.py). Further lines of one event (a traceback) repeat this header
followed by `| `, so that grep finds them too. Each event is one write(2):
processes sharing a file or stderr never interleave their lines.

No line carries a control character: every argument of a line is shown by
printable.printable, its newlines too (a forged message id cannot start a
line), unless the code marks it as text of several lines (`Lines`: a
traceback); the format's own newlines stay (the further lines above).

The identity and the task are process-wide: a child sets its identity right
after the fork, and a worker child handles one task at a time, so the lines
of the plugin's own threads name the task too. The file of target `file` is
opened (O_APPEND) by the supervisor before it forks or drops privileges:
children of every user inherit it.
"""
import collections.abc
import logging
import logging.handlers
import os
import sys

from taskqueue import redact
from taskqueue.host import filetrust
from taskqueue.printable import printable
from taskqueue.protocol import tracecontext

#: Where syslog listens on Debian.
SYSLOG_SOCKET = "/dev/log"
#: What --log accepts; [logging] target also takes `file` (with a path).
TARGETS = ("auto", "stderr", "syslog")
#: Mode of a log file taskqueue creates; its directory says who may reach it.
FILE_MODE = 0o640
#: A task id is shown in at most this many characters.
TASK_ID_MAX = 200
#: The line of a file or stderr (syslog adds the time itself).
LINE_FORMAT = "%(asctime)s taskqueue[%(process)d] %(context)s%(levelname)s: %(message)s"

_component = None   # "supervisor", "dispatcher", "worker"; None in the command-line tools
_child = None       # a child's name: "dispatcher#0", "worker2/bifh1#2"
_task = None        # the task this process handles now
_trace = None       # its trace id (32 hex digits), when it carries one


def set_identity(component, child=None):
    """Name this process in every line: its component ("supervisor"; a child's
    kind, "dispatcher" or "worker", as its ChildSpec says) and, in a child, its name."""
    global _component, _child
    _component, _child = component, child


def set_task(task_id, trace_id=None):
    """Name `task_id` and its `trace_id` (tracecontext.trace_id: checked hex digits) in
    every line from now on, from any thread; None: no task."""
    global _task, _trace
    _task, _trace = task_id, trace_id


def about(props):
    """`extra` for a line about one message: names its message id as the line's task,
    and its trace."""
    return {"task": getattr(props, "message_id", None),
            "trace": tracecontext.trace_id(getattr(props, "headers", None))}


def context(task=None, trace=None):
    """The words between the pid and the level, each followed by a space. A line's
    own task comes with its own trace (or none), not the process's."""
    if not task:
        task, trace = _task, _trace
    words = [word for word in (_component, _child) if word]
    if task:
        words.append(f"task={_printable(task)}")
    if trace:
        words.append(f"trace={trace}")
    return "".join(f"{word} " for word in words)


def _printable(text):
    """A message id as one word: a client chooses it, and must not forge lines or fields."""
    text = str(text)
    shown = printable(text[:TASK_ID_MAX], spaces=False)
    return shown + ("..." if len(text) > TASK_ID_MAX else "")


def choose_target(target, terminal, journal, syslog):
    """The target `target` means here: `auto` is stderr for a terminal or systemd's
    journal, else syslog when there is one; syslog falls back to stderr without one."""
    if target == "auto":
        return "stderr" if terminal or journal or not syslog else "syslog"
    if target == "syslog" and not syslog:
        return "stderr"
    return target


def setup(level=logging.INFO, target="auto", path=None, stream=None):
    """Send every line at `level` (a number or a name) and above to `target`, replacing
    the handlers set up before. Raises OSError when the file of target `file` (`path`)
    cannot be opened for appending."""
    stream = stream or sys.stderr
    has_syslog = os.path.exists(SYSLOG_SOCKET)
    chosen = choose_target(target, _is_terminal(stream), _is_journal(stream), has_syslog)
    if chosen == "file":
        # Never through a link, nor into a file or directory someone else planted.
        fd = filetrust.open_append(path, FILE_MODE)
        handler = _FdHandler(fd, owned=True)
    elif chosen == "syslog":
        handler = _syslog_handler()
    else:
        handler = _stderr_handler(stream)
    _install(handler, level)
    if chosen != target and target == "syslog":
        logging.getLogger(__name__).warning("no syslog here (%s is missing): logging to stderr",
                                            SYSLOG_SOCKET)


def _syslog_handler():
    handler = logging.handlers.SysLogHandler(
        SYSLOG_SOCKET, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
    # syslog adds the time; a traceback stays in one message.
    handler.setFormatter(logging.Formatter(
        "taskqueue[%(process)d]: %(context)s%(levelname)s: %(message)s"))
    return handler


def handoff():
    """How this process logs, for a fresh interpreter to log the same way (adopt()):
    (level, "fd", fd) for a file or stderr (the fd must be passed on), (level, "syslog")."""
    root = logging.getLogger()
    handler = root.handlers[0] if root.handlers else None
    if isinstance(handler, logging.handlers.SysLogHandler):
        return (root.level, "syslog")
    fd = handler.fd if isinstance(handler, _FdHandler) and handler.fd is not None else 2
    return (root.level, "fd", fd)


def adopt(how):
    """Log as handoff() said the supervisor does (in a child that exec'd a fresh
    interpreter and inherited the fd)."""
    level, target, *fd = how
    _install(_syslog_handler() if target == "syslog" else _FdHandler(fd[0]), level)


def _install(handler, level):
    root = logging.getLogger()
    root.setLevel(level if isinstance(level, int) else level.upper())
    debug = root.level <= logging.DEBUG
    if not debug:
        handler.addFilter(_QuietPika())
    handler.addFilter(_ContextFilter())
    handler.addFilter(_RedactFilter())
    for old in root.handlers:
        old.close()
    root.handlers[:] = [handler]
    # pika logs every connection detail at INFO: at debug (-v) all of it, else warnings only.
    logging.getLogger("pika").setLevel(logging.NOTSET if debug else logging.WARNING)


#: Where pika logs a connection failing or ending, at ERROR and often with a traceback,
#: several lines per event (seven for one failed attempt); taskqueue says it once itself,
#: naming the broker ("lost the broker ...", "cannot connect to the broker: ...").
PIKA_CONNECTION_LOGGERS = ("pika.adapters", "pika.connection")
#: pika's WARNING for a channel the broker closed (a declare refused, say).
PIKA_CHANNEL_CLOSE = "Received remote Channel.Close"
#: pika's ERROR for a frame it did not expect: RabbitMQ 3.10, its quorum queue's leader
#: moving, answered a consume twice and then closed the connection (541 INTERNAL_ERROR),
#: which taskqueue says itself ("lost the broker ...").
PIKA_UNEXPECTED_FRAME = "Unexpected frame"


def quiet_pika(record):
    """Whether a line pika logged is shown at the default level (pure: the record may be
    changed). Lines about a connection failing or ending (ERROR from
    PIKA_CONNECTION_LOGGERS, PIKA_UNEXPECTED_FRAME) are not; the others show
    without their traceback, the
    exception in a few words instead. At debug every line shows, as pika wrote it."""
    if record.name != "pika" and not record.name.startswith("pika."):
        return True
    if record.levelno == logging.ERROR and record.name.startswith(PIKA_CONNECTION_LOGGERS):
        return False
    if isinstance(record.msg, str) and record.msg.startswith(PIKA_CHANNEL_CLOSE):
        return False   # a refusal taskqueue explains (explain_refusal) or works around
    if isinstance(record.msg, str) and record.msg.startswith(PIKA_UNEXPECTED_FRAME):
        return False   # a broker's slip on its way to closing the connection
    if record.exc_info:
        exc = record.exc_info[1]
        record.msg, record.args = f"{record.getMessage()} ({type(exc).__name__}: {exc})", None
        record.exc_info = record.exc_text = None
    return True


class _QuietPika(logging.Filter):
    def filter(self, record):
        return quiet_pika(record)


class _ContextFilter(logging.Filter):
    def filter(self, record):
        record.context = context(getattr(record, "task", None), getattr(record, "trace", None))
        return True


class _RedactFilter(logging.Filter):
    """No broker password and no control character in any line, whoever logged it (pika,
    a plugin, a traceback): the message and the traceback are rendered here, redacted,
    escaped, and kept so."""

    def filter(self, record):
        record.msg, record.args = printable(redact.redact(_message(record)), newlines=True), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = printable(redact.redact(record.exc_text), newlines=True)
        return True


def _message(record):
    """The record's message, each argument shown escaped; as logging would render it
    when an argument is used in a way only the original supports (`%d` of a Decimal)."""
    if not record.args:
        return record.getMessage()
    args = record.args
    try:
        record.args = shown_args(args)
        return record.getMessage()
    except (TypeError, ValueError):
        record.args = args
        return record.getMessage()


def shown_args(args):
    """A line's arguments as they may be shown (pure): each one that is not a number
    becomes its text, redacted and escaped, newlines too. `%r` of one shows the
    escaped repr() of the original."""
    if isinstance(args, collections.abc.Mapping):
        return {key: _shown(value) for key, value in args.items()}
    return tuple(_shown(arg) for arg in args)


class Lines(str):
    """An argument of a line that is text of several lines (a traceback): its newlines
    are kept, as further lines of the event; its other control characters are escaped."""


def _shown(value):
    if isinstance(value, (int, float)) or value is None:
        return value    # %d, %.3f and the like need the number; it shows nothing else
    if type(value) is str and value.isprintable():
        return value    # nearly every argument: shown as it is (the line is redacted whole)
    return _Shown(value)


class _Shown(str):
    """An argument's str() redacted and escaped; its repr() the original's, so."""

    def __new__(cls, value):
        text = printable(redact.redact(value), newlines=isinstance(value, Lines))
        shown = super().__new__(cls, text)
        shown.original = value
        return shown

    def __repr__(self):
        return printable(redact.redact(repr(self.original)))


class LineFormatter(logging.Formatter):
    """The header, then the message; each further line repeats the header and `| `."""

    def format(self, record):
        text = super().format(record).rstrip("\n")   # sets record.message
        head = self.formatMessage(record)
        head = head[:len(head) - len(record.message)]
        return text.replace("\n", f"\n{head}| ")


class _FdHandler(logging.Handler):
    """Each event as one write(2), so that processes sharing `fd` never interleave lines."""

    def __init__(self, fd, owned=False, stream=None):
        super().__init__()
        self.fd, self._owned, self._stream = fd, owned, stream
        self.setFormatter(LineFormatter(LINE_FORMAT))

    def emit(self, record):
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
            if self._stream is not None:
                self._stream.flush()   # what others printed to it comes first
            while data:
                data = data[os.write(self.fd, data):]
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def close(self):
        if self._owned and self.fd is not None:
            os.close(self.fd)
            self.fd = None
        super().close()


def _stderr_handler(stream):
    try:
        return _FdHandler(stream.fileno(), stream=stream)
    except (AttributeError, OSError, ValueError):   # not backed by a file descriptor
        handler = logging.StreamHandler(stream)
        handler.setFormatter(LineFormatter(LINE_FORMAT))
        return handler


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _is_journal(stream, environ=os.environ):
    """systemd connected `stream` to its journal: JOURNAL_STREAM names its device and inode."""
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return environ.get("JOURNAL_STREAM") == f"{st.st_dev}:{st.st_ino}"
