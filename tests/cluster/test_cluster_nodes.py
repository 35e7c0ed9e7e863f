"""A 3-node cluster under node stops: no task lost, and where the connections sit.

Two pools (a dispatcher and 4 marker workers each) with `[amqp] url` listing
the three nodes, the fault suite's task shape scaled to fit CI (TASKS each),
and one node stopped mid-run: the queue leader's, the dispatcher's, or one for
good. The nodes each connection sits on are read from the broker (the port it
came in on), never from taskqueue.
"""
import threading
import time

import pytest

from clusterload import (FIGURES, NodeBroker, Progress, account, figures, log_figures,
                         marker_config, publish_all, assert_quorum_with_three_members)
from support import wait_for

pytestmark = pytest.mark.timeout(300)

#: Tasks per fault run: the fault suite's 10 000 (the issue's shape). Each run takes
#: 20-40 s on 2 cores; the whole folder stays under 6 minutes.
TASKS = 10_000
#: What each pool runs: a dispatcher and this many marker workers.
WORKERS = 4


def start_two_pools(cluster, start_pool, record_dir):
    urls = [(n.host, n.port) for n in cluster.nodes]
    client = NodeBroker("127.0.0.1", cluster.nodes[0].port)
    client.reset()   # nothing an earlier test left
    pools = [start_pool(marker_config(record_dir, urls, processes=WORKERS), raw=True)
             for _ in range(2)]
    wait_for(lambda: client.counts("worker_marker")[1] == 2 * WORKERS, 90,
             lambda: f"{2 * WORKERS} workers consuming\n{pools[0].log()[-3000:]}")
    # Both dispatchers' connections too, as the broker sees them.
    wait_for(lambda: sum(cluster.spread().values()) == 2 * (WORKERS + 1), 30,
             lambda: f"{2 * (WORKERS + 1)} connections, saw {cluster.spread()}")
    client.close()
    return pools


def test_connections_of_two_pools_spread_so_no_node_holds_more_than_half(
        cluster, start_pool, record_dir):
    pools = start_two_pools(cluster, start_pool, record_dir)
    spread = cluster.spread()
    FIGURES["connections of 2 pools x 4 workers (+ 2 dispatchers)"] = spread
    for pool in pools:
        assert pool.stop() == 0
    assert max(spread.values()) <= sum(spread.values()) / 2, spread


def victim_leader(cluster):
    return cluster.node_named(cluster.queues()["worker_marker"]["leader"])


def victim_dispatcher(cluster):
    nodes = [node for node, name in cluster.connections() if name.startswith("taskqueue dispatcher")]
    return max(set(nodes), key=nodes.count)


def victim_busiest(cluster):
    spread = cluster.spread()
    return cluster.node_named(max(spread, key=spread.get))


FAULTS = {
    # name: (which node, started again after the stop)
    "the queue leader's node stopped": (victim_leader, True),
    "the dispatcher's node stopped": (victim_dispatcher, True),
    "a node stopped for good": (victim_busiest, False),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_tasks_survive_a_node_stop(cluster, start_pool, record_dir, fault):
    choose, start_again = FAULTS[fault]
    pools = start_two_pools(cluster, start_pool, record_dir)
    assert_quorum_with_three_members(cluster)
    spread_before = cluster.spread()
    victim = choose(cluster)
    # The test's publisher and checker talk to a node that stays up.
    other = next(n for n in cluster.nodes if n is not victim)
    client = NodeBroker("127.0.0.1", other.port)
    ids = [f"t{n:05d}" for n in range(TASKS)]
    errors = []
    publisher = threading.Thread(target=publish_all, args=(client, ids, errors))
    progress = Progress(record_dir, TASKS)
    started = time.monotonic()
    publisher.start()
    progress.start()
    try:
        wait_for(lambda: progress.done >= TASKS // 3, 120, f"{TASKS // 3} tasks done before the stop")
        stopped_at = time.monotonic()
        victim.stop()
        down_for = time.monotonic() - stopped_at
        done_at_stop = progress.done
        assert done_at_stop < TASKS, "every task was done before the node stopped: a proof of nothing"
        if start_again:
            victim.start()
            cluster.wait_running(3, 120, via=other)
            down_for = time.monotonic() - stopped_at
        publisher.join(120)
        assert not errors, errors

        def accounted():
            done, dead, lost = account(client, ids, record_dir)
            return not lost and (done, dead, lost)
        done, dead, lost = wait_for(accounted, 180, lambda: f"every task accounted for; "
                                    f"{len(account(client, ids, record_dir)[2])} missing\n"
                                    f"{pools[0].log()[-3000:]}", interval=0.5)
    finally:
        progress.stop()
    elapsed = time.monotonic() - started
    spread_after = cluster.spread(via=other)
    FIGURES[f"{TASKS} tasks, {fault}"] = figures(
        TASKS, done, dead, lost, progress.longest_stall,
        **{"node stopped": victim.name, "down (s)": round(down_for, 1),
           "done when it was down": done_at_stop,
           "connections per node before": spread_before,
           "connections per node after": spread_after,
           "child restarts": sum(p.log().count("STARTING -> RUNNING") for p in pools)
           - 2 * (WORKERS + 1),
           **log_figures(pools),
           "seconds": round(elapsed, 1)})
    client.close()
    assert not lost and not dead
    for pool in pools:
        assert pool.stop() == 0
