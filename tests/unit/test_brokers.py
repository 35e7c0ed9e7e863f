"""Which broker a process tries first, and in which order after failures (failover.py)."""
import collections
import logging
import os

import pika
import pika.adapters.utils.connection_workflow
import pytest

from taskqueue.broker import failover
from taskqueue.host import logs
from taskqueue.supervision.child import ChildContext
from taskqueue.supervision.lifecycle import EXIT_CONNECTION
from taskqueue.supervision.specs import ChildSpec
from taskqueue.supervision.supervisor import Supervisor

from fakes import FakeProcesses

pytestmark = pytest.mark.timeout(10)

NODES = ["10.0.0.1:5672", "10.0.0.2:5672", "10.0.0.3:5672"]


def test_without_failures_the_list_is_rotated_to_start_at_first():
    assert failover.order(NODES, 0, {}, now=100.0) == [0, 1, 2]
    assert failover.order(NODES, 1, {}, now=100.0) == [1, 2, 0]
    assert failover.order(NODES, 5, {}, now=100.0) == [2, 0, 1]   # modulo the count
    assert failover.order([], 3, {}, now=100.0) == []


def test_a_pool_of_eight_children_on_three_nodes_puts_at_most_three_on_one_node():
    for offset in (0, 1, 2, failover.spread_offset("worker-host-a")):
        firsts = collections.Counter(failover.order(NODES, offset + slot, {}, 0.0)[0]
                                     for slot in range(8))
        assert sorted(firsts.values()) == [2, 3, 3], firsts


def test_a_broker_that_failed_lately_is_tried_last_until_the_window_passes():
    failed = {"10.0.0.1:5672": 100.0}
    assert failover.order(NODES, 0, failed, now=101.0) == [1, 2, 0]
    assert failover.order(NODES, 2, failed, now=101.0) == [2, 1, 0]
    # once RECENT_FAILURE seconds passed it takes its place again
    assert failover.order(NODES, 0, failed, now=100.0 + failover.RECENT_FAILURE) == [0, 1, 2]


def test_of_several_failed_brokers_the_one_that_failed_longest_ago_comes_first():
    failed = {"10.0.0.1:5672": 105.0, "10.0.0.2:5672": 100.0}
    assert failover.order(NODES, 0, failed, now=110.0) == [2, 1, 0]
    everything = {node: 100.0 for node in NODES}   # a tie keeps the rotation
    assert failover.order(NODES, 1, everything, now=110.0) == [1, 2, 0]


def test_a_route_remembers_failures_tells_its_reporter_and_names_the_next_broker():
    told = []
    route = failover.Route(first=0, report=lambda *event: told.append(event))
    route.attempt_failed("10.0.0.1:5672", "connection refused", now=100.0)
    route.connected("10.0.0.2:5672", "RabbitMQ 3.10.8")
    assert route.order(NODES, now=101.0) == [1, 2, 0]
    assert route.lost("10.0.0.2:5672", "connection reset", NODES, now=102.0) == "10.0.0.3:5672"
    assert told == [("unreachable", "10.0.0.1:5672 connection refused"),
                    ("broker", "10.0.0.2:5672 RabbitMQ 3.10.8"),
                    ("lost", "10.0.0.2:5672 connection reset")]


def test_a_child_reports_its_broker_on_one_short_line_and_the_supervisor_keeps_it():
    r, w = os.pipe()
    os.set_blocking(r, False)
    try:
        ctx = ChildContext("t#0", w, None, failover.Route(first=1))
        ctx.route.attempt_failed("10.0.0.2:5672", "no answer\nin 6s", now=1.0)
        ctx.route.connected("10.0.0.3:5672", "RabbitMQ 3.10.8, cluster rabbit@a")
        pid = os.getpid()
        assert os.read(r, 4096).decode() == ("unreachable 10.0.0.2:5672 no answer in 6s\n"
                                             "broker 10.0.0.3:5672 RabbitMQ 3.10.8, "
                                             "cluster rabbit@a\n")
    finally:
        os.close(r)
        os.close(w)
    sup = Supervisor([])
    sup.handle_unreachable(pid, "10.0.0.2:5672 no answer in 6s")
    assert sup.broker_failures["10.0.0.2:5672"][1] == "no answer in 6s"
    sup.handle_broker(pid, "10.0.0.2:5672 RabbitMQ 3.10.8")   # it answers again
    assert sup.broker_failures == {}


def test_each_slot_of_a_supervisor_starts_at_the_next_broker_and_avoids_recent_failures():
    sup = Supervisor([ChildSpec("dispatcher", 1, None, queue="taskqueue", kind="dispatcher"),
                      ChildSpec("w", 3, None, queue="worker_w")])
    sup._spread = 0
    routes = [sup._route(slot) for slot in sup.slots]
    assert [route.order(NODES, 0.0)[0] for route in routes] == [0, 1, 2, 0]
    # When a child loses 10.0.0.2, the child forked next for that slot starts at the next one
    sup.handle_lost(1, "10.0.0.2:5672 connection reset")
    later = sup._route(sup.slots[1])
    assert later.order(NODES, sup.broker_failures["10.0.0.2:5672"][0] + 1) == [2, 0, 1]


def test_addresses_are_host_port_with_brackets_for_ipv6():
    assert failover.address("10.0.0.1", 5672) == "10.0.0.1:5672"
    assert failover.address("::1", 5672) == "[::1]:5672"


def test_server_summary_says_product_version_and_cluster_name():
    props = {"product": b"RabbitMQ", "version": "3.10.8", "cluster_name": "rabbit@vm",
             "platform": "Erlang/OTP 25"}
    assert failover.server_summary(props) == "RabbitMQ 3.10.8, cluster rabbit@vm"
    assert failover.server_summary(None) == ""


@pytest.mark.parametrize("close_reason, words", [
    (pika.exceptions.StreamLostError(
        "Stream connection lost: ConnectionResetError(104, 'Connection reset by peer')"),
     "connection reset"),
    (pika.exceptions.StreamLostError("Transport indicated EOF"), "the broker closed the socket"),
    (pika.exceptions.ConnectionClosedByBroker(
        320, "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"),
     "closed by the broker: 320 CONNECTION_FORCED - broker forced connection closure with "
     "reason 'shutdown'"),
    (pika.exceptions.ChannelClosedByBroker(406, "PRECONDITION_FAILED - x"),
     "channel closed by the broker: 406 PRECONDITION_FAILED - x"),
    (pika.exceptions.AMQPHeartbeatTimeout("No activity or too many missed heartbeats in the "
                                          "last 60 seconds"), "missed heartbeats"),
    ("the broker cancelled the consumer ctag1.x", "the broker cancelled the consumer ctag1.x"),
    # attempts that failed, as pika 1.2 to 1.4 raise them
    (pika.exceptions.AMQPConnectionError(
        "AMQPConnectionWorkflowFailed: 1 exceptions in all; last exception - "
        "AMQPConnectorSocketConnectError: TimeoutError(\"TCP connection attempt timed out: "
        "'127.0.0.1'/(...)\"); first exception - None"), "no answer to the TCP connect"),
    (pika.adapters.utils.connection_workflow.AMQPConnectorStackTimeout(
        "Timeout during AMQP handshake'127.0.0.1'"), "no answer to the AMQP handshake"),
    (pika.exceptions.AMQPConnectionError(
        "AMQPConnectorSocketConnectError: ConnectionRefusedError(111, 'Connection refused')"),
     "connection refused"),
    (pika.exceptions.ProbableAuthenticationError("ConnectionClosedByBroker: (403) 'ACCESS_REFUSED'"),
     "authentication refused (user, password)"),
])
def test_reason_says_why_a_connection_ended_in_a_few_words(close_reason, words):
    assert failover.reason(close_reason) == words


def record(name, level, exc=None):
    rec = logging.LogRecord(name, level, __file__, 1, "%s failed", ("thing",),
                            (type(exc), exc, None) if exc else None)
    return rec


def test_at_the_default_level_pika_says_nothing_of_a_connection_ending():
    lost = ConnectionResetError(104, "Connection reset by peer")
    assert not logs.quiet_pika(record("pika.adapters.utils.io_services_utils", logging.ERROR, lost))
    assert not logs.quiet_pika(record("pika.adapters.base_connection", logging.ERROR))
    assert not logs.quiet_pika(record("pika.connection", logging.ERROR))
    refused = logging.LogRecord("pika.channel", logging.WARNING, __file__, 1,
                                "Received remote Channel.Close (%s): %r on %s", (406, "x", "ch"), None)
    assert not logs.quiet_pika(refused)
    # RabbitMQ 3.10 mid-failover: a second ConsumeOk, then 541 INTERNAL_ERROR on the connection
    unexpected = logging.LogRecord("pika.channel", logging.ERROR, __file__, 1,
                                   "Unexpected frame: %r", ("<METHOD Basic.ConsumeOk>",), None)
    assert not logs.quiet_pika(unexpected)


def test_other_pika_lines_show_without_traceback_and_ours_untouched():
    failed = record("pika.callback", logging.ERROR, ValueError("bad"))
    assert logs.quiet_pika(failed)
    assert (failed.getMessage(), failed.exc_info) == ("thing failed (ValueError: bad)", None)
    blocked = record("pika.connection", logging.WARNING)
    assert logs.quiet_pika(blocked) and blocked.getMessage() == "thing failed"
    ours = record("taskqueue.worker", logging.ERROR, ValueError("bad"))
    assert logs.quiet_pika(ours) and ours.exc_info is not None


def test_debug_brings_every_pika_line_back(tmp_path):
    path = str(tmp_path / "t.log")
    try:
        logs.setup(logging.DEBUG, "file", path)
        logging.getLogger("pika.adapters.utils.io_services_utils").error("Socket failed to connect")
        logging.getLogger("pika.connection").debug("a detail")
        logs.setup(logging.INFO, "file", path)
        logging.getLogger("pika.adapters.utils.io_services_utils").error("hidden at info")
        logging.getLogger("pika.connection").info("also hidden")
        logging.getLogger("pika.connection").warning("Received Connection.Blocked from broker")
    finally:
        logs.setup(logging.WARNING, "stderr")
    text = open(path).read()
    assert "Socket failed to connect" in text and "a detail" in text
    assert "hidden" not in text and "Received Connection.Blocked from broker" in text


@pytest.mark.parametrize("reported, level", [(True, logging.INFO), (False, logging.WARNING)])
def test_the_exit_of_a_child_that_said_it_lost_its_broker_is_no_warning(caplog, reported, level):
    procs = FakeProcesses()
    sup = Supervisor([ChildSpec("w", 1, None, queue="worker_w")], fork=procs.fork_and_watch,
                     kill=procs.kill)
    sup.open()
    try:
        sup.start()
        [pid] = procs.running
        sup.dispatch(("reports", [("ready", pid, ""), ("broker", pid, "10.0.0.1:5672 RabbitMQ")]))
        if reported:   # the child logged `lost the broker ...` itself
            sup.dispatch(("reports", [("lost", pid, "10.0.0.1:5672 connection reset")]))
        caplog.set_level(logging.INFO)
        sup.dispatch(("exit", pid, EXIT_CONNECTION << 8))
        [line] = [r for r in caplog.records if "exit 3" in r.getMessage()]
        assert line.levelno == level
        assert ("10.0.0.1:5672" in sup.broker_failures) == reported
    finally:
        sup.close()


def test_the_children_of_a_failed_node_spread_over_the_others():
    # 3 nodes, a pool of 9 children: 3 start at each node; node b fails
    addresses = ["a:1", "b:1", "c:1"]
    firsts = [failover.order(addresses, first, {"b:1": 100.0}, 101.0)[0] for first in range(9)]
    assert sorted(firsts) == [0, 0, 0, 0, 2, 2, 2, 2, 2]   # b's three went 1 to a, 2 to c
    # and with no failure every child keeps its own node
    assert [failover.order(addresses, first, {}, 101.0)[0] for first in range(9)] == \
        [0, 1, 2] * 3
