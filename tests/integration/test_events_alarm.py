"""Task events must not stop tasks when the broker raises a resource alarm (a node of
its own: memory alarm set with rabbitmqctl). RabbitMQ stops reading from a
connection that publishes during an alarm, and with it that connection's acks: a
worker that published its events on its consuming connection would stall."""
import shutil
import tempfile

import pytest

from nodes import RabbitNode
from support import Broker, config_text, recorder_config, wait_for


@pytest.fixture(scope="module")
def alarm_node():
    base = tempfile.mkdtemp(prefix="tq-alarm-")
    node = RabbitNode(base, "tqalarm")
    node.start()
    yield node
    node.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.timeout(120)
def test_tasks_go_on_through_a_memory_alarm_their_events_are_dropped(
        alarm_node, start_pool, records):
    broker = Broker("/", alarm_node.port)
    try:
        broker.reset()
        pool = start_pool(config_text("/", recorder_config(records, extra="prefetch: 1\n"),
                                      port=alarm_node.port), raw=True)
        wait_for(lambda: broker.counts("worker_recorder")[1] >= 1, 30, "a consumer")
        for n in range(12):
            broker.submit_one_hop("recorder", {"id": f"a{n}", "sleep": 0.2})
        wait_for(lambda: records.ids("start"), 10, "the first task started")
        alarm_node.ctl("set_vm_memory_high_watermark", "0.000001")
        try:
            wait_for(lambda: len(records.ids()) == 12, 30,
                     lambda: f"12 tasks done through the alarm (done: {len(records.ids())})"
                     f"\n--- log:\n{pool.log()[-3000:]}")
            wait_for(lambda: "task events paused" in pool.log(), 10, "the pause said")
        finally:
            alarm_node.ctl("set_vm_memory_high_watermark", "0.4")
    finally:
        broker.close()
