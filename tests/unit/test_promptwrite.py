"""promptwrite.Prompt: when a transport's frames go out, and when pika's own
writable watcher takes over. A stand-in transport with pika's attribute names
(pure logic: which calls happen in which order); the real pika transport is
exercised in tests/integration/test_prompt_session.py."""
import collections
import errno

import gevent
import pytest

from taskqueue.broker.promptwrite import Prompt


class Transport:
    """pika's _AsyncPlaintextTransport as Prompt sees it; its socket takes `room` bytes."""
    _STATE_ACTIVE = 1

    def __init__(self, room=10**6, error=None):
        self._state = self._STATE_ACTIVE
        self._tx_buffers = collections.deque()
        self.room, self.error = room, error
        self.sent, self.pika_writes, self.writers = [], [], []
        self._nbio = self
        self._sock = self

    # pika's own write: buffers, and starts its writable watcher if the buffer was empty
    def write(self, data):
        self.pika_writes.append(data)
        if self._state == self._STATE_ACTIVE:
            self._tx_buffers.append(data)

    def _buffer_tx_data(self, data):
        self._tx_buffers.append(data)

    def _produce(self):
        while self._tx_buffers:
            if self.error is not None:
                raise self.error
            if not self.room:
                raise BlockingIOError(errno.EAGAIN, "would block")
            chunk = self._tx_buffers.popleft()
            taken = chunk[:self.room]
            self.room -= len(taken)
            self.sent.append(taken)
            if len(taken) < len(chunk):
                self._tx_buffers.appendleft(chunk[len(taken):])

    def _on_socket_writable(self):
        pass

    def fileno(self):
        return 99

    def set_writer(self, fd, callback):
        self.writers.append((fd, callback))


def prompt(transport):
    Prompt(transport, gevent.get_hub().loop)
    return transport


def test_frames_written_in_one_turn_go_out_together_at_its_end_without_a_watcher():
    t = prompt(Transport())
    t.write(b"ack1")
    t.write(b"ack2")
    assert t.sent == []                      # nothing yet: still this turn
    gevent.sleep(0)                          # the hub's turn ends
    assert t.sent == [b"ack1", b"ack2"] and not t._tx_buffers
    assert t.writers == []                   # no writable watcher was needed
    assert t.pika_writes == [b"ack2"]        # the second joined the buffer pika's way
    t.write(b"ack3")
    gevent.sleep(0)
    assert t.sent[-1] == b"ack3" and t.writers == []


def test_what_the_socket_does_not_take_is_left_to_pikas_writable_watcher():
    t = prompt(Transport(room=3))
    t.write(b"abcdef")
    gevent.sleep(0)
    assert t.sent == [b"abc"] and list(t._tx_buffers) == [b"def"]
    assert t.writers == [(99, t._on_socket_writable)]
    # While pika's watcher is on, more frames queue behind the rest, pika's way.
    t.write(b"gh")
    assert list(t._tx_buffers) == [b"def", b"gh"] and t.pika_writes == [b"gh"]
    gevent.sleep(0)
    assert len(t.writers) == 1


@pytest.mark.parametrize("error", [BlockingIOError(errno.EAGAIN, "would block"),
                                   ConnectionResetError(errno.ECONNRESET, "reset")])
def test_a_send_error_is_left_to_pikas_writable_handler(error):
    t = prompt(Transport(error=error))
    t.write(b"ack")
    gevent.sleep(0)   # must not raise into the hub
    assert list(t._tx_buffers) == [b"ack"]
    assert t.writers == [(99, t._on_socket_writable)]


def test_an_inactive_transport_gets_pikas_own_write():
    t = prompt(Transport())
    t._state = 2
    t.write(b"late")
    gevent.sleep(0)
    assert t.pika_writes == [b"late"] and t.sent == [] and t.writers == []


def test_a_transport_closed_before_the_turn_ends_sends_nothing():
    t = prompt(Transport())
    t.write(b"ack")
    t._state = 2
    gevent.sleep(0)
    assert t.sent == [] and t.writers == []
