"""promptwrite.PromptTLS on pika's real _AsyncSSLTransport (its state machine, as the
installed pika ships it), with a stand-in TLS socket and a recording I/O services
object: when frames go out promptly, when pika keeps them, and that a TLS write that
wants the other direction is handed back to pika in the state pika's own write()
would have left, from which pika finishes it without an abort."""
import ssl

import gevent
import pytest
from pika.adapters.utils.io_services_utils import _AsyncSSLTransport

from taskqueue.broker import promptwrite


class Sock:
    """What the transport uses of an ssl.SSLSocket. `plan`: what the next send()s raise
    (None: that one succeeds)."""

    def __init__(self):
        self.sent, self.plan, self.pending_bytes = [], [], 0

    def fileno(self):
        return 7

    def send(self, data):
        if self.plan:
            error = self.plan.pop(0)
            if error is not None:
                raise error
        self.sent.append(bytes(data))
        return len(data)

    def recv(self, size):
        raise ssl.SSLWantReadError(ssl.SSL_ERROR_WANT_READ, "no record yet")

    def pending(self):
        return self.pending_bytes


class Services:
    """The I/O services as the transport calls them: records the watchers."""

    def __init__(self):
        self.reader = self.writer = None
        self.writer_starts, self.callbacks = 0, []

    def set_reader(self, fd, callback):
        self.reader = callback

    def remove_reader(self, fd):
        self.reader = None

    def set_writer(self, fd, callback):
        self.writer = callback
        self.writer_starts += 1

    def remove_writer(self, fd):
        self.writer = None

    def add_callback_threadsafe(self, callback):
        self.callbacks.append(callback)


class Protocol:
    def data_received(self, data):
        raise AssertionError("no data is read in these tests")

    def connection_lost(self, error):
        raise AssertionError(f"connection lost: {error!r}")


def transport():
    sock, services = Sock(), Services()
    t = _AsyncSSLTransport(sock, Protocol(), services)
    services.callbacks.clear()          # pika's read-ahead check at start
    promptwrite.PromptTLS(t, gevent.get_hub().loop)
    return t, sock, services


def at_rest(t):
    return (t._ssl_writable_action is None and t._ssl_readable_action == t._consume
            and t._state == t._STATE_ACTIVE)


def want_write():
    return ssl.SSLWantWriteError(ssl.SSL_ERROR_WANT_WRITE, "socket full")


def want_read():
    return ssl.SSLWantReadError(ssl.SSL_ERROR_WANT_READ, "a record must come first")


def test_frames_of_one_turn_go_out_together_at_its_end_without_a_watcher():
    t, sock, services = transport()
    t.write(b"ack1")
    t.write(b"ack2")
    assert sock.sent == []
    gevent.sleep(0)
    assert b"".join(sock.sent) == b"ack1ack2"
    assert services.writer_starts == 0 and at_rest(t) and t.get_write_buffer_size() == 0
    t.write(b"ack3")
    gevent.sleep(0)
    assert sock.sent[-1] == b"ack3" and services.writer_starts == 0 and at_rest(t)


@pytest.mark.parametrize("error", [want_write(), want_read()], ids=["want-write", "want-read"])
def test_a_tls_write_that_wants_more_is_finished_by_pika_from_its_own_state(error):
    t, sock, services = transport()
    sock.plan = [error]
    t.write(b"ack")
    gevent.sleep(0)
    # As pika's write() leaves a buffer it starts: its _produce on the writable event.
    assert t._ssl_writable_action == t._produce and services.writer == t._on_socket_writable
    assert t.get_write_buffer_size() == 3 and sock.sent == []
    t.write(b"more")                         # queued behind, pika's way, not sent now
    gevent.sleep(0)
    assert sock.sent == [] and services.writer_starts == 1
    sock.plan = [error]                      # pika retries the same write: same answer
    t._on_socket_writable()
    if isinstance(error, ssl.SSLWantReadError):
        # pika now waits to read before it retries the write
        assert t._ssl_readable_action == t._produce and services.writer is None
        t._on_socket_readable()
    else:
        t._on_socket_writable()
    assert b"".join(sock.sent) == b"ackmore" and at_rest(t) and services.writer is None
    assert t._state == t._STATE_ACTIVE
    t.write(b"next")                         # at rest again: prompt again
    gevent.sleep(0)
    assert sock.sent[-1] == b"next" and services.writer_starts == 1


def test_while_a_read_waits_to_write_pika_keeps_the_frames():
    # A TLS read that needed a write (renegotiation, key update): pika retries that read
    # on the writable event; nothing else may go through the engine before it.
    t, sock, services = transport()
    t._ssl_writable_action, t._ssl_readable_action = t._consume, None
    t.write(b"ack")
    gevent.sleep(0)
    assert sock.sent == [] and t._ssl_writable_action == t._consume
    t._on_socket_writable()                  # the read completes (wants read: at rest) ...
    assert t._ssl_writable_action == t._produce   # ... and pika starts its producer
    t._on_socket_writable()
    assert sock.sent == [b"ack"] and at_rest(t)


def test_a_machine_that_leaves_rest_before_the_turn_ends_gets_no_prompt_send():
    t, sock, services = transport()
    t.write(b"ack")
    t._ssl_writable_action = t._consume      # a read in this turn wanted a write
    gevent.sleep(0)
    assert sock.sent == [] and t.get_write_buffer_size() == 3


def test_a_send_error_goes_to_pikas_writable_handler_which_aborts():
    t, sock, services = transport()
    sock.plan = [ConnectionResetError(104, "reset")]
    t.write(b"ack")
    gevent.sleep(0)                          # must not raise into the hub
    assert t._ssl_writable_action == t._produce and services.writer is not None
    assert t._state == t._STATE_ACTIVE


def test_decrypted_input_left_in_the_engine_is_read_as_pika_would():
    t, sock, services = transport()
    sock.pending_bytes = 10
    t.write(b"ack")
    gevent.sleep(0)
    assert sock.sent == [b"ack"] and services.callbacks == [t._on_socket_readable]


def test_an_inactive_transport_gets_pikas_own_write():
    t, sock, services = transport()
    t._state = t._STATE_ABORTED_BY_USER
    t.write(b"late")
    gevent.sleep(0)
    assert sock.sent == [] and services.writer_starts == 0
