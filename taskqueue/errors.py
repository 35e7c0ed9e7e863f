"""Every exception taskqueue raises beyond the module that raises it: one name per
event, whichever code path saw it (a gevent Session, a blocking connection, the
Client, a tool). Most are TaskqueueError's, whose str() is a sentence for the
operator; a few keep the base their callers catch them by (ValueError for a TLS
file or a header field, Exception for a supervisor's bug).

The bottom of the import order: every module may import this one, so it imports
only the standard library and redact.py (str() hides passwords), never a module
that imports pika, gevent or another taskqueue module (tests/unit/test_layers.py
holds it there).
"""
from taskqueue import redact


class TaskqueueError(Exception):
    """Base of all taskqueue errors; str() is a sentence for the operator, with no
    broker password in it (a pika error or a URL quoted in it is redacted)."""

    def __str__(self):
        return redact.redact(super().__str__())


class ConfigError(TaskqueueError):
    """The configuration file is missing or invalid; nothing is started."""


class PluginError(TaskqueueError):
    """A worker plugin could not be loaded or constructed."""


class TopologyError(TaskqueueError):
    """A queue could not be declared as taskqueue needs it."""


class InputError(TaskqueueError):
    """Bad input on the command line (an argument, a file of tasks); nothing was done."""


class PublishRefused(TaskqueueError):
    """The broker did not take a message: it returned it unroutable, or nacked it."""


class PublishNacked(PublishRefused):
    """The broker nacked `subject` (a message) `tries` times: see nacks.py. Raised by
    both publishers, the blocking one (blocking.py, the Client) and the gevent Session
    (amqp.py, a worker's dead letters and retries)."""

    def __init__(self, subject, tries=1, waited=0.0):
        how = "nack" if tries == 1 else f"nack; {tries} tries in {waited:g} s"
        super().__init__(f"the broker refused {subject} ({how}): is the queue full "
                         f"(max-length with reject-publish)?")
        self.subject = subject

    def after(self, tries, waited):
        """The same refusal, once tried `tries` times over `waited` seconds."""
        return PublishNacked(self.subject, tries, waited)


class PartlySubmitted(PublishRefused):
    """Client.submit_many stopped: the broker refused a task, or the connection went.
    `ids` holds, in the order of the items, each task's message id if the broker
    confirmed it, else None (not submitted, or not known to be)."""

    def __init__(self, message, ids):
        super().__init__(message)
        self.ids = ids


class NoEventStream(TaskqueueError):
    """The vhost has no task events stream (events off everywhere, or never written):
    `taskqueue task` and `taskqueue events` say so and exit with EXIT_NO_EVENTS."""


class SessionClosed(TaskqueueError):
    """The connection or channel closed, or the broker stopped answering; that
    connection cannot be used any more. (The Client's ConnectionLost.)"""


class BrokerUnreachable(SessionClosed):
    """No broker of the list could be connected to (refused, TLS, login): the tools
    exit with startup.EXIT_NO_BROKER."""


class UndecodableHeaders(SessionClosed):
    """A message came with headers pika cannot decode (a table nested too deep, a
    timestamp past 9999): the Client closed that connection (client.py)."""


class TaskFailed(TaskqueueError):
    """Client.call's task ended without the plugin's reply: the worker sent a failure
    reply instead (replies.py: it raised and was dead-lettered, was rejected, ran out
    of retries, was refused). `task_id`: its correlation id; `reason`: the worker's why."""

    def __init__(self, task_id, reason, worker_type=None):
        whose = f"{worker_type} task" if worker_type else "task"
        super().__init__(f"{whose} {task_id} failed: {reason}")
        self.task_id, self.reason = task_id, reason


class TaskCancelled(BaseException):
    """Raised in a plugin's task thread when its running task is cancelled (`taskqueue
    cancel`): its `finally` blocks and context managers run before the process is
    replaced. A BaseException, as KeyboardInterrupt is, so that `except Exception`
    does not swallow it. It arrives at the thread's next Python instruction: not
    inside a call into C (a sleep, a socket read), only once that returns."""


class NotRequeueable(TaskqueueError):
    """Requeuing this dead letter would not give the dispatcher something it routes."""


class Unlisted(Exception):
    """The queues could not be listed; str() says why, for the operator."""


class TlsFileError(ValueError):
    """A TLS file that cannot be used: `option` names the [amqp] option holding `path`."""

    def __init__(self, option, path, reason, denied=False):
        super().__init__(reason)
        self.option, self.path, self.reason = option, path, reason
        #: The file could not be read for lack of permission (keptsecrets.denied).
        self.denied = denied


class UndecodableField(ValueError):
    """fielddecode.decode_value's answer to a value it does not decode (pika's raised too)."""


class UserSwitchError(Exception):
    """A child could not become the user and groups of its worker group (child.py)."""


class IllegalTransition(Exception):
    """A child slot was asked to make a transition lifecycle.py's table has not: a bug."""


class SupervisorFailure(Exception):
    """The supervisor cannot go on; the internal error behind it is logged already."""
