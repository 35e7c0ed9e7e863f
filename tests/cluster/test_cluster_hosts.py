"""Hosts in network namespaces: a worker host cut off, a broker node partitioned.

Three broker nodes and two worker-pool hosts, each in a namespace of its own
(conftest.py `hosts`): the brokers talk to each other on one private subnet
and are reached by clients on another, so a partition between brokers leaves
the clients' paths up, and cutting a host's link is a host gone, not a port
refusing. What the broker sees (connections, unacknowledged tasks per peer
address) is read from the broker.
"""
import threading
import time

import pytest

import clusternet
from accounting import Ledger
from clusterload import (FIGURES, NodeBroker, NsPool, Progress, figures, held_on, idle,
                         log_figures, marker_config, most_extra, publish_all,
                         assert_quorum_with_three_members)
from support import wait_for

pytestmark = pytest.mark.timeout(300)

#: Tasks per run, each taking SLEEP s: workers hold a task in hand when a cut comes.
TASKS, SLEEP = 2000, 0.005
WORKERS = 4
#: Seconds; the broker drops a silent client after about two of them.
HEARTBEAT = 4


def start_pools(hosts, workdir, record_dir, ns_pools, url_orders):
    nodes = hosts.cluster.nodes
    client = NodeBroker(nodes[0].host, nodes[0].port, netns=hosts.client)
    client.reset()   # nothing an earlier test left
    for ns, order in zip(hosts.workers, url_orders):
        urls = [(nodes[i].host, nodes[i].port) for i in order]
        ns_pools.append(NsPool(ns, workdir, marker_config(record_dir, urls, HEARTBEAT, WORKERS)))
    wait_for(lambda: client.counts("worker_marker")[1] == 2 * WORKERS, 90,
             lambda: f"{2 * WORKERS} workers consuming\n{ns_pools[0].log()[-3000:]}")
    assert_quorum_with_three_members(hosts.cluster)
    return client


def publish(client, prefix):
    ids = [f"{prefix}{n:05d}" for n in range(TASKS)]
    errors = []
    thread = threading.Thread(target=publish_all, args=(client, ids, errors, SLEEP), daemon=True)
    thread.start()
    return ids, thread, errors


def settle(client, ids, record_dir, cluster):
    """The run's ledger once every task has an outcome and nothing is in flight any more
    (or 180 s passed): the test judges it (Ledger.problems)."""
    return Ledger(ids, record_dir).settle(client, 180, idle=lambda: idle(cluster))


def assert_accounted(ledger, done, most_extra, pools):
    """Nothing lost, no dead letter (no fault here kills a task), duplicates within the
    bound: else fail naming what, with the pools' logs."""
    problems = ledger.problems(rules=(), most_extra=most_extra, done=done)
    assert not problems, "\n".join(problems) + "".join(
        f"\n--- pool {n}:\n{pool.log()[-2000:]}" for n, pool in enumerate(pools))


def test_a_worker_host_cut_off_mid_run_has_its_tasks_redelivered_to_the_other(
        hosts, workdir, record_dir, ns_pools):
    cluster, h1 = hosts.cluster, hosts.workers[0]
    client = start_pools(hosts, workdir, record_dir, ns_pools, [(0, 1, 2), (0, 1, 2)])
    h1_address = address_of(h1)
    ids, publisher, errors = publish(client, "cut")
    progress = Progress(record_dir, TASKS)
    progress.start()
    try:
        wait_for(lambda: progress.done >= TASKS // 3, 120, f"{TASKS // 3} tasks done before the cut")
        # When the host's link goes down: no FIN, no RST, its packets just stop.
        hosts.network.set_link(h1, "eth0", "down")
        cut_at = time.monotonic()
        _, unacked = cluster.from_peer(h1_address)
        # Then the broker drops its connections after the heartbeat timeout...
        wait_for(lambda: cluster.from_peer(h1_address) == (0, 0), 10 * HEARTBEAT,
                 f"the broker dropping the connections of {h1_address}", interval=0.5)
        dropped_after = time.monotonic() - cut_at
        # ... and the other host takes every task the cut one held: with h1 still
        # cut off, nothing is left ready or unacknowledged anywhere, all accounted for.
        publisher.join(120)
        assert not errors, errors
        ledger = settle(client, ids, record_dir, cluster)
        done = ledger.completions()   # the redelivered ones done again, counted
        backlog = cluster.backlog()
    finally:
        progress.stop()
        hosts.network.set_link(h1, "eth0", "up")
    # The host back: its children find the broker again.
    wait_for(lambda: client.counts("worker_marker")[1] == 2 * WORKERS, 120,
             lambda: f"h1's workers back\n{ns_pools[0].log()[-3000:]}")
    FIGURES[f"{TASKS} tasks, a worker host cut off (ip link set down)"] = figures(
        ledger, done, progress.longest_stall,
        **{"unacked on the cut host (broker's view)": unacked,
           "broker dropped its connections after (s)": round(dropped_after, 1),
           "heartbeat (s)": HEARTBEAT, **log_figures(ns_pools)})
    assert unacked > 0, "nothing was unacknowledged on the cut host: a proof of nothing"
    # Only what the cut host held unacknowledged can run twice: the broker gives those out again.
    assert_accounted(ledger, done, unacked, ns_pools)
    assert all(backlog.get(q, (0, 0)) == (0, 0) for q in ("taskqueue", "worker_marker")), \
        f"tasks left ready or unacknowledged with h1 cut off: {backlog}"
    client.close()
    for pool in ns_pools:
        assert pool.stop() == 0


def address_of(ns):
    """The address of host `ns` on the clients' subnet."""
    out = clusternet.ip("-n", ns, "-4", "-o", "addr", "show", "dev", "eth0")
    return out.split()[3].split("/")[0]


def test_a_broker_node_partitioned_from_the_others_pauses_and_its_clients_move(
        hosts, workdir, record_dir, ns_pools):
    cluster = hosts.cluster
    b1, b2, b3 = cluster.nodes
    # h1 lists b3 first, h2 b1: today's children all sit on the first node of their list.
    client = start_pools(hosts, workdir, record_dir, ns_pools, [(2, 0, 1), (0, 1, 2)])
    wait_for(lambda: sum(cluster.spread(via=b1).values()) == 2 * (WORKERS + 1), 30,
             lambda: f"{2 * (WORKERS + 1)} connections, saw {cluster.connections(via=b1)}")
    spread_before = cluster.spread(via=b1)
    # What can run twice: b3 closes its clients' connections, and deliveries any queue
    # leader on b3 made may be given out again by the majority's new leader
    # (docs/08-several-hosts.md).
    held = held_on(cluster, via=b1)
    ids, publisher, errors = publish(client, "part")
    progress = Progress(record_dir, TASKS)
    progress.start()
    try:
        wait_for(lambda: progress.done >= TASKS // 3, 120,
                 f"{TASKS // 3} tasks done before the partition")
        # When b3 loses the cluster network (its clients still reach it)
        hosts.network.set_link(b3.netns, "cl0", "down")
        cut_at = time.monotonic()
        # Then b3 finds itself in the minority and pauses (pause_minority): it stops
        # listening and closes its clients' connections; they reconnect to b1 or b2.
        wait_for(lambda: not clusternet.listening(b3.host, b3.port, hosts.client), 90,
                 "b3 paused: not listening", interval=0.2)
        paused_after = time.monotonic() - cut_at

        def on_majority():
            try:
                spread = cluster.spread(via=b1)
            except RuntimeError:   # b1 still asks b3 (nodedown) until it saw b3 go
                return None
            return spread[b1.name] + spread[b2.name] == 2 * (WORKERS + 1) and spread
        spread_during = wait_for(on_majority, 60, lambda: f"every connection on b1 or b2, saw "
                                 f"{cluster.connections(via=b1)}", interval=0.5)
        moved_after = time.monotonic() - cut_at
        done_at_move = progress.done
        assert len(cluster.wait_running(2, 60, via=b1)) == 2   # the majority's view
        # When the partition heals, b3 comes back into the cluster
        hosts.network.set_link(b3.netns, "cl0", "up")
        healed_at = time.monotonic()
        cluster.wait_running(3, 120, via=b1)
        rejoined_after = time.monotonic() - healed_at
        publisher.join(120)
        assert not errors, errors
        ledger = settle(client, ids, record_dir, cluster)
        done = ledger.completions()
    finally:
        progress.stop()
        hosts.network.set_link(b3.netns, "cl0", "up")
    bound = most_extra([held])
    FIGURES[f"{TASKS} tasks, a broker node partitioned (pause_minority)"] = figures(
        ledger, done, progress.longest_stall,
        **{"duplicate outcomes allowed": bound,
           "connections per node before": spread_before,
           "connections per node during (b3 unreachable)": spread_during,
           "b3 stopped listening after (s)": round(paused_after, 1),
           "every client on b1/b2 after (s)": round(moved_after, 1),
           "done by then": done_at_move,
           "b3 back in the cluster after healing (s)": round(rejoined_after, 1),
           **log_figures(ns_pools)})
    assert spread_before[b3.name] > 0, "no client on b3: the partition would prove nothing"
    assert_accounted(ledger, done, bound, ns_pools)
    client.close()
    for pool in ns_pools:
        assert pool.stop() == 0
