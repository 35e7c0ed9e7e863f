"""Several brokers in [amqp] url: spread, fail over past a dead node fast, say it once.

The "nodes" are ports on loopback: the machine's broker, a black hole in front
of it (tests/netfaults.py), or a TCP proxy to it that the test cuts.
"""
import json
import os
import re
import signal
import subprocess

import pytest

from netfaults import BlackHole, TcpProxy
from support import TASKQUEUE, recorder_config, wait_for

#: [amqp] connect_timeout of these tests, and what a child may take beyond it
#: (fork, plugin import, declares; a loaded 2-core machine).
CONNECT_TIMEOUT = 2.0
MARGIN = 1.5


def url(port, vhost):
    return f"amqp://guest:guest@127.0.0.1:{port}/{vhost}"


def ready_times(log):
    """{child: [seconds from fork to consuming, per start]} from the supervisor's lines."""
    times = {}
    for child, seconds in re.findall(r"(\S+#\d) pid=\d+ STARTING -> RUNNING \(ready in ([\d.]+)s\)", log):
        times.setdefault(child, []).append(float(seconds))
    return times


def status_of(pool):
    out = subprocess.run([TASKQUEUE, "status", "--json", "--config", pool.config_path],
                         capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", ["drop", "silent"])
def test_a_black_holed_first_broker_costs_a_child_at_most_connect_timeout(
        broker, start_pool, records, vhost, kind):
    # Given a first broker that never answers (SYN dropped, or accepted and silent)
    hole = BlackHole(kind)
    try:
        urls = f"{url(hole.port, vhost)}, {url(5672, vhost)}"
        pool = start_pool(recorder_config(records, processes=2) +
                          f"\n[amqp]\nurl: {urls}\nconnect_timeout: {CONNECT_TIMEOUT:g}\n", raw=True)
        # When three children start (dispatcher, 2 workers: both brokers are someone's first)
        wait_for(lambda: broker.counts("worker_recorder")[1] == 2, 30, "2 consumers")
        wait_for(lambda: len(ready_times(pool.log())) == 3, 10, "3 children ready")
        first = [times[0] for times in ready_times(pool.log()).values()]
        # Then the children that met the hole first waited connect_timeout for it, no longer
        assert max(first) >= CONNECT_TIMEOUT - 0.1, first
        assert max(first) <= CONNECT_TIMEOUT + MARGIN, first
        seen = {row["address"]: row for row in status_of(pool)["supervisors"][0]["brokers"]}
        assert seen[f"127.0.0.1:{hole.port}"]["children"] == 0
        assert seen[f"127.0.0.1:{hole.port}"]["failure"]
        assert seen["127.0.0.1:5672"]["children"] == 3
        # and restarted children go to the answering broker at once: the hole failed lately
        for pid in pool.children():
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: all(len(t) == 2 for t in ready_times(pool.log()).values()), 30,
                 "3 children ready again")
        again = [times[1] for times in ready_times(pool.log()).values()]
        assert max(again) < CONNECT_TIMEOUT, again
        broker.submit("recorder", {"id": "through"})
        wait_for(records.all, 20, "a task done through the second broker")
        assert pool.stop() == 0
    finally:
        hole.close()


@pytest.mark.timeout(120)
def test_cut_connections_are_logged_once_each_naming_the_broker_lost_and_the_next(
        broker, start_pool, records, vhost):
    # Given a pool of 3 workers and a dispatcher over two "nodes": proxies to one broker
    proxies = [TcpProxy(5672), TcpProxy(5672)]
    try:
        urls = ", ".join(url(proxy.port, vhost) for proxy in proxies)
        # (events: no: each child's events connection would follow it to its proxy)
        pool = start_pool(recorder_config(records, processes=3) +
                          f"\n[amqp]\nurl: {urls}\nevents: no\n", raw=True)
        wait_for(lambda: broker.counts("worker_recorder")[1] == 3, 30, "3 consumers")
        # the four children spread: two on each; each worker's side connection (its cancels
        # reader's, broker/sideline.py) follows it: the dispatcher and a worker on one, 3
        # connections, two workers on the other, 4
        wait_for(lambda: sorted(len(p.pairs) for p in proxies) == [3, 4], 10,
                 lambda: f"3 and 4 connections, not {[len(p.pairs) for p in proxies]}")
        for n in range(20):
            broker.submit("recorder", {"id": f"t{n}", "sleep": 0.05})
        # When every connection is cut, twice
        lost = 0
        for cut in (1, 2):
            # 7 connections cut; each of the 4 children says it lost its broker once (a
            # worker's side connection is its own business: said at INFO, retried)
            assert sum(proxy.cut() for proxy in proxies) == 7
            lost += 4
            pool.wait_log(r"lost the broker", count=lost, timeout=30)
            # every child back and done setting up (a cut during a child's setup is a
            # failed start, not a lost connection): the dispatcher consuming too
            wait_for(lambda: broker.counts("worker_recorder")[1] == 3
                     and broker.counts("taskqueue")[1] == 1
                     and sum(len(p.pairs) for p in proxies) == 7, 30, "4 children back")
        wait_for(lambda: len(set(records.ids())) == 20, 60, "20 tasks done")
        assert pool.stop() == 0
        log = pool.log()
        # Then one line per lost connection, naming the node lost and the one tried next
        lines = re.findall(r".* lost the broker .*", log)
        assert len(lines) == lost == 8, lines
        ports = {str(proxy.port) for proxy in proxies}
        for line in lines:
            m = re.search(r"WARNING: lost the broker 127\.0\.0\.1:(\d+) \((.+)\); "
                          r"reconnecting to 127\.0\.0\.1:(\d+)$", line)
            assert m and m.group(1) in ports and m.group(3) in ports - {m.group(1)}, line
        # (the supervisor's line for each such child's exit 3 is INFO: no news)
        assert len(re.findall(r" INFO: \S+ pid=\d+ exit 3 ", log)) == lost
        assert not re.findall(r" WARNING: \S+ pid=\d+ exit 3 ", log)
        # and nothing of pika's: no traceback, no ERROR line
        assert "Traceback" not in log
        assert not re.findall(r".* ERROR: .*", log), re.findall(r".* ERROR: .*", log)
    finally:
        for proxy in proxies:
            proxy.close()


@pytest.mark.timeout(60)
def test_quorum_queues_are_declared_with_balanced_leaders_and_older_ones_still_used(
        broker, start_pool, records, vhost):
    # Given worker_recorder as an older taskqueue declared it: no leader locator
    args = {"x-queue-type": "quorum", "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "taskqueue_dead", "x-delivery-limit": 20,
            "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
    broker.channel.queue_declare("worker_recorder", durable=True, arguments=args)
    pool = start_pool(recorder_config(records) + "\n[recorder2]\nworkers: 1\n"
                      f"record_dir: {records.path}\n")
    # When the pool and the dispatcher declare their queues, and tasks flow to both types
    broker.submit("recorder", {"id": "old"})
    broker.submit("recorder2", {"id": "new"})
    wait_for(lambda: sorted(records.ids()) == ["new", "old"], 30, "both tasks done")
    assert "QUARANTINED" not in pool.log() and "PRECONDITION" not in pool.log()
    # Then the new queues have balanced leaders, the old one is as it was
    listed = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "arguments"],
                            capture_output=True, text=True, check=True).stdout
    rows = dict(line.split("\t", 1) for line in listed.splitlines()[1:] if "\t" in line)
    assert '{"x-queue-leader-locator","balanced"}' in rows["worker_recorder2"]
    assert '{"x-queue-leader-locator","balanced"}' in rows["taskqueue_dead"]
    assert "x-queue-leader-locator" not in rows["worker_recorder"]
    assert pool.stop() == 0
