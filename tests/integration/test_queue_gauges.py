"""The queue gauges of a running pool's metrics, compared with what rabbitmqctl says."""
import subprocess
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from nodes import free_port, free_ports
from support import config_text, recorder_config, wait_for
from test_metrics import scrape

from taskqueue.protocol import delays

#: What a pool of the recorder alone reports on (taskqueue.delay.* summed apart).
REPORTED = ("taskqueue", "worker_recorder", "worker_recorder+high", "taskqueue_dead")


def list_queues(vhost):
    """{queue: (messages ready, consumers)} from rabbitmqctl."""
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "--no-table-headers",
                          "name", "messages_ready", "consumers"],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    rows = (line.split("\t") for line in out.splitlines() if line.strip())
    return {name: (int(ready), int(consumers)) for name, ready, consumers in rows}


def gauges(port):
    """{queue: (ready, consumers)}, delayed, broker_up from one scrape."""
    samples = scrape(port)
    per_queue = {}
    for (name, labels), value in samples.items():
        if name in ("taskqueue_queue_messages_ready", "taskqueue_queue_consumers"):
            per_queue.setdefault(dict(labels)["queue"], {})[name] = int(value)
    counts = {queue: (d["taskqueue_queue_messages_ready"], d["taskqueue_queue_consumers"])
              for queue, d in per_queue.items()}
    return (counts, samples.get(("taskqueue_delayed_messages", frozenset())),
            samples.get(("taskqueue_broker_up", frozenset())))


def serving_with_metrics(start_pool, records):
    """A workerpool serving the recorder, its metrics on a port of its own, once the
    gauges say it consumes: (port, pool)."""
    port = free_port()
    pool = start_pool(recorder_config(records) + f"\n[metrics]\nport: {port}\n",
                      command="workerpool")
    pool.wait_log(rf"metrics on http://127.0.0.1:{port}/metrics")
    wait_for(lambda: gauges(port)[0].get("worker_recorder", (0, 0))[1] == 1, 30,
             "the recorder consuming its queue")
    return port, pool


def test_queue_gauges_match_rabbitmqctl(broker, client, start_pool, records, vhost):
    # Given a worker pool (no dispatcher: what goes to `taskqueue` stays there) with metrics
    port, pool = serving_with_metrics(start_pool, records)
    # When tasks wait in taskqueue, dead letters in taskqueue_dead, and 2 tasks are delayed
    for n in range(3):
        broker.submit("recorder", {"n": n})
    for n in range(2):
        broker.publish_raw(b"{}", queue="taskqueue_dead")
        client.submit("recorder", {"later": n}, delay=3600)

    # Then the gauges say what rabbitmqctl says (its quorum queue counts lag: polled)
    def agree():
        listed = list_queues(vhost)
        counts, delayed, up = gauges(port)
        expected = {queue: listed[queue] for queue in REPORTED if queue in listed}
        in_delay = sum(listed.get(queue, (0, 0))[0] for queue in delays.LEVEL_QUEUES)
        return (counts == expected and delayed == in_delay == 2 and up == 1
                and expected["taskqueue"] == (3, 0) and expected["taskqueue_dead"][0] == 2)
    # FRESH_SECONDS of caching, and rabbitmqctl's lag: a deadline well past both.
    wait_for(agree, 40, lambda: f"gauges {gauges(port)} and rabbitmqctl {list_queues(vhost)}")


def test_a_missing_queue_leaves_the_others_out(broker, start_pool, records):
    # Given a pool serving the recorder
    port, pool = serving_with_metrics(start_pool, records)
    # When taskqueue and taskqueue_dead are gone (a passive declare of them answers 404)
    broker.channel.queue_delete("taskqueue_dead")
    broker.channel.queue_delete("taskqueue")
    # Then a later reading has the worker queue alone, the broker up, no delayed task
    wait_for(lambda: gauges(port) == ({"worker_recorder": (0, 1),
                                       "worker_recorder+high": (0, 1)}, 0, 1), 30,
             lambda: f"the worker queues' gauges alone, not {gauges(port)}")


def test_broker_down_gives_broker_up_0_within_the_scrape(start_pool, records, vhost):
    # Given a pool whose broker is a port nobody listens on
    port, dead = free_ports(2)
    pool = start_pool(config_text(vhost, recorder_config(records) + f"\n[metrics]\nport: {port}\n",
                                  port=dead), command="workerpool", raw=True)
    pool.wait_log(rf"metrics on http://127.0.0.1:{port}/metrics")
    # When scraped: answered within the probe's bound, broker_up 0 and no queue gauge
    start = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert time.monotonic() - start < 4.5
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["taskqueue_broker_up"] == 0
    assert "taskqueue_queue_messages_ready" not in samples
    pool.wait_log("queue gauges: the broker did not answer")


def test_scrapes_while_children_are_forked_are_all_answered_by_the_supervisor(
        start_pool, records):
    # Given pools that fork their children while scraped without a pause (a fresh child
    # once ran copies of the supervisor's greenlets: its acceptor took a scrape and
    # closed it unanswered, its probe greenlet could read the probe's answer)
    for attempt in range(4):
        port = free_port()
        pool = start_pool(recorder_config(records) + f"\n[metrics]\nport: {port}\n")
        pool.wait_log(rf"metrics on http://127.0.0.1:{port}/metrics")
        # Then every scrape is answered, with the broker up
        for _ in range(60):
            assert scrape(port)[("taskqueue_broker_up", frozenset())] == 1
        pool.kill()
