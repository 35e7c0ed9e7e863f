"""One hierarchy for every error taskqueue reports to an operator."""
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
