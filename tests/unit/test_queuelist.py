"""queuelist: reading rabbitmqctl's list of queues, and when to trust it (pure parts)."""
import socket

import pytest

from taskqueue.cli import queuelist
from taskqueue.errors import Unlisted
from taskqueue.host.config import AmqpSettings


def test_the_json_listing_gives_the_names_whatever_they_hold():
    text = '[\n{"name":"worker_x y\\t"},\n{"name":"taskqueue"}\n]\n'
    assert queuelist.parse_listing(text) == {"worker_x y\t", "taskqueue"}
    assert queuelist.parse_listing("[\n]\n") == set()


@pytest.mark.parametrize("text", ["", "Only root or rabbitmq should run rabbitmqctl", '{"a": 1}',
                                  '[{"nom": "x"}]', "[1]", '[{"name": 1}]'])
def test_anything_else_is_said_not_taken(text):
    with pytest.raises(Unlisted, match="answered something else than a list"):
        queuelist.parse_listing(text)


def test_loopback_names_are_local_others_not():
    assert queuelist.is_local("127.0.0.1") and queuelist.is_local("localhost")
    assert not queuelist.is_local("192.0.2.1")           # TEST-NET-1: nobody's
    assert not queuelist.is_local("no-such-host.invalid")


def test_this_hosts_own_address_is_local():
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))     # no packet is sent: it picks this host's address
            own = s.getsockname()[0]
    except OSError:   # a network namespace with loopback only (the trixie stack)
        pytest.skip("this host has no address but loopback")
    assert queuelist.is_local(own)


def test_a_broker_on_another_host_is_not_listed_and_the_reason_says_so():
    with pytest.raises(Unlisted, match=r"the broker \(192.0.2.1\) is not on this host"):
        queuelist.list_queues(AmqpSettings(host="192.0.2.1"), 5)


def test_a_listing_that_lacks_a_queue_the_broker_has_is_of_another_node():
    counts = {"taskqueue": (0, 1), "worker_a": None, "taskqueue_dead": (0, 0)}
    assert queuelist.contradiction({"taskqueue", "taskqueue_dead", "worker_b"}, counts) is None
    assert queuelist.contradiction({}, counts) == (
        "rabbitmqctl answers for another node than the broker: it does not list taskqueue, "
        "taskqueue_dead")
