"""What differs between RabbitMQ 3.x and 4.x for taskqueue, measured on the broker
the suite runs against (3.10 here, 4.0 in the trixie stack of ./run-tests).

docs/01-architecture.md, "RabbitMQ 3.x and 4.x", says what each difference means for taskqueue.
(Quorum queues' default delivery limit of 20 in 4.x: test_dead.py, a dead letter
handed back 25 times.)
"""

import pika
import pika.exceptions
import pytest

from support import BROKER_HOST, CRAFTED, broker_version, closes_connection

QUEUE = "worker_versions"   # declared as taskqueue declares a worker queue


version = broker_version


def get(broker):
    method, props, body = broker.channel.basic_get(QUEUE)
    assert method is not None, f"{QUEUE} is empty"
    return method, props, body


def test_x_delivery_count_counts_the_returns_of_a_task(broker):
    broker.publish_raw(b"task", queue=QUEUE)
    method, props, _ = get(broker)
    count = (props.headers or {}).get("x-delivery-count")
    # A first delivery: 3.x says 0, 4.x sets no header at all.
    assert count == (None if version(broker) >= (4, 0) else 0)
    # A task given back (basic.nack, as a worker's intake does), then refused
    # with requeue (basic.reject): 3.x and 4.0-4.2 count every return; 4.3
    # counts only the reject (rabbitmq-server#15387).
    broker.channel.basic_nack(method.delivery_tag, requeue=True)
    method, props, _ = get(broker)
    after_nack = props.headers["x-delivery-count"] if props.headers else 0
    assert after_nack == (0 if version(broker) >= (4, 3) else 1)
    broker.channel.basic_reject(method.delivery_tag, requeue=True)
    method, props, _ = get(broker)
    assert props.headers["x-delivery-count"] == after_nack + 1
    broker.channel.basic_ack(method.delivery_tag)


def test_a_high_priority_task_goes_first_on_rabbitmq_4_only(broker):
    # Quorum queues have priorities since 4.0 (two levels: above 4 is high); 3.x
    # ignores the property on them. The dispatcher keeps it on the copy it routes.
    for name, priority in (("first", None), ("second", None), ("urgent", 9)):
        broker.publish_raw(name.encode(), queue=QUEUE, priority=priority)
    order = []
    for _ in range(3):
        method, _, body = get(broker)
        order.append(body.decode())
        broker.channel.basic_ack(method.delivery_tag)
    if version(broker) >= (4, 0):
        assert order == ["urgent", "first", "second"]
    else:
        assert order == ["first", "second", "urgent"]


@pytest.mark.parametrize("kind", sorted(CRAFTED))
def test_a_crafted_direct_reply_to_name_closes_the_publishers_connection(broker, kind):
    # 3.x closes the whole connection for both (541 INTERNAL_ERROR); 4.0 for garbage,
    # and takes a well-formed pid of a node that does not exist (and drops the message).
    connection = pika.BlockingConnection(pika.ConnectionParameters(
        BROKER_HOST, broker.port, virtual_host=broker.vhost))
    channel = connection.channel()
    channel.confirm_delivery()
    try:
        channel.basic_publish("", CRAFTED[kind], b"x")
        closed = None
    except pika.exceptions.ConnectionClosedByBroker as exc:
        closed = (exc.reply_code, exc.reply_text)
    finally:
        if connection.is_open:
            connection.close()
    expected = (541, "INTERNAL_ERROR") if closes_connection(kind, version(broker)) else None
    assert closed == expected
