"""A worker's session writes promptly (promptwrite.py) over a real pika connection:
an ack reaches the broker within the hub's turn, without a writable watcher."""
import gevent
import pika
import pytest

from taskqueue.broker import amqp
from taskqueue.host.config import AmqpSettings

from support import BROKER_HOST, wait_for


@pytest.mark.timeout(60)
def test_a_prompt_session_acks_within_the_hubs_turn_and_never_watches_for_writability(
        broker, vhost, broker_port):
    session = amqp.Session(AmqpSettings(host=BROKER_HOST, port=broker_port, vhost=vhost),
                           "test prompt").open()
    try:
        assert session.write_promptly() is True
        transport = session._connection._transport
        watchers = []
        real_set_writer = transport._nbio.set_writer
        transport._nbio.set_writer = lambda fd, cb: (watchers.append(fd), real_set_writer(fd, cb))
        session.declare_queue("worker_prompt")
        for n in range(50):
            broker.publish_raw(b"%d" % n, queue="worker_prompt")
        deliveries = gevent.queue.Queue()
        session.qos(100)
        session.consume("worker_prompt", lambda method, props, body: deliveries.put(method))
        for _ in range(50):
            method = deliveries.get(timeout=10)
            session.ack(method.delivery_tag)
            gevent.sleep(0)    # one turn of the hub: the ack is in the kernel after it
            assert transport.get_write_buffer_size() == 0
        assert watchers == [] and session.is_open
    finally:
        session.close()
    # The broker got all 50 acks: closing requeued none of them.
    wait_for(lambda: broker.counts("worker_prompt")[1] == 0, 10, "the consumer gone")
    assert broker.counts("worker_prompt") == (0, 0)
