"""A publish the broker nacked: tried again a few times, then refused in clear words. Pure.

With publisher confirms, RabbitMQ nacks a message it did not take ("a
publisher receiving [basic.nack] probably needs to republish the offending
messages", AMQP 0-9-1). Two causes matter here: a queue full with
`overflow: reject-publish` (lasting: it frees up only as consumers take
tasks), and a quorum queue that cannot take it just now (declared a moment
ago on a loaded node, its leader moving), which is over within a second or
so. A nacked message was not enqueued, so sending it again adds no copy (and
our publishers are at least once in any case: see client.py).

Policy: 3 tries, 0.5 s and then 1.5 s apart. That rides out the transient
case (the one seen: a new quorum queue on a fresh node under load), and a
full queue is still reported within 2 s, instead of the submitter waiting
on a queue that will not drain. A message tried again goes to the queue
after those published meanwhile: nacks cost the order of the nacked ones.

Who follows it: the Client (blocking.py's publishers) and the gevent Session's
confirmed publishes (amqp.py: a worker's dead letters and retries). A worker
whose copy is refused gives the task back to its queue and goes on (worker.py):
it comes again, and its copy is tried anew, until the queue has room.
"""
import logging
import time

from taskqueue.errors import PublishNacked

log = logging.getLogger(__name__)

#: Seconds to wait before the 2nd, 3rd, ... try of a nacked publish.
DELAYS = (0.5, 1.5)
#: Tries in all, the first included.
TRIES = len(DELAYS) + 1


def delay_before_retry(tries):
    """Seconds to wait before trying again a publish nacked `tries` times; None when
    it has had its TRIES and is refused."""
    if tries < 1:
        raise ValueError(f"tries {tries!r}: a nacked publish was tried at least once")
    return DELAYS[tries - 1] if tries <= len(DELAYS) else None


def refused(subject, tries):
    """What to say of `subject` (the message for queue 'taskqueue', it) once the broker
    nacked it `tries` times (the sentence of errors.PublishNacked)."""
    return str(PublishNacked(subject, tries, waited(tries)))


def waited(tries):
    """Seconds spent waiting between `tries` tries."""
    return sum(DELAYS[:tries - 1])


def retry(publish, nacked, sleep=time.sleep):
    """publish(), tried again after delay_before_retry() while it raises `nacked` (an
    exception class with after(tries, waited): the same refusal, saying how often it
    was tried); that after(TRIES, ...) once the tries are spent. Any other exception passes."""
    tries = 1
    while True:
        try:
            return publish()
        except nacked as exc:
            wait = delay_before_retry(tries)
            if wait is None:
                raise exc.after(tries, waited(tries)) from None
            log.info("%s; trying again in %g s (try %d of %d)", exc, wait, tries + 1, TRIES)
        sleep(wait)
        tries += 1
