"""Never lose a task: the promise, tested under the faults production brings.

Every task published is either completed or dead-lettered with its cause,
while workers and dispatchers are killed, the broker restarts and every
connection is cut. Runs against the suite's own RabbitMQ node (conftest.py).
The 10 000-task runs are judged by the ledger (tests/accounting.py): every dead
letter of the run kept, by id, with a reason the faults allow, and no more
duplicates than what the processes they ended held in flight.
"""
import json
import os
import random
import re
import threading
import time

import pytest

from accounting import Ledger, completions, delivery_limit_rule, window_bound
from figures import FIGURES
from support import Broker, alive, wait_for
from taskqueue.protocol.routing import PLAIN_SHAPE

pytestmark = pytest.mark.timeout(900)


def marker_config(record_dir, processes=4, extra=""):
    return (f"[DEFAULT]\nworkers: 0\n\n[marker]\nworkers: {processes}\n"
            f"record_dir: {record_dir}\n{extra}")


#: The marker workers of the 10 000-task runs, and the delivery limit they run with
#: ([amqp] delivery_limit's default).
WORKERS, DELIVERY_LIMIT = 4, 5


def queues_idle(node, queues=("taskqueue", "worker_marker")):
    """True when no task is ready or unacknowledged in `queues` (the node's own count)."""
    rows = node.ctl("list_queues", "-p", "/", "name", "messages_ready", "messages_unacknowledged")
    counts = {name: int(ready) + int(unacked)
              for name, ready, unacked in (line.split() for line in rows.splitlines())
              if ready.isdigit() and unacked.isdigit()}
    return all(counts.get(queue, 0) == 0 for queue in queues)


def running_children(pool):
    """{slot name: pid} of the children now RUNNING, from the supervisor's log."""
    latest = {}
    for key, pid in re.findall(r"(\S+#\d+) pid=(\d+) STARTING -> RUNNING", pool.log()):
        latest[key] = int(pid)
    return {key: pid for key, pid in latest.items() if alive(pid)}


def publish_all(vhost, port, ids, errors, one_hop=False):
    """Submit every id to the marker type, through taskqueue (the envelope, for the
    dispatcher) or `one_hop` (docs/02-messages-and-wire-format.md, "One hop": to
    taskqueue.direct by type, the workitem as body, the worker_type header); confirmed and
    mandatory."""
    try:
        client = Broker(vhost, port)
        submit = client.submit_one_hop if one_hop else client.submit
        for task_id in ids:
            submit("marker", {"id": task_id}, message_id=task_id)
        client.close()
    except Exception as exc:  # reported by the test, which waits for this thread
        errors.append(exc)


def publish_all_one_hop(vhost, port, ids, errors):
    publish_all(vhost, port, ids, errors, one_hop=True)


#: A worker is killed in the middle of a task of its own, which takes HOLD_SECONDS and
#: says which process holds it (the marker's announce), submitted when the kill is due.
HOLD_SECONDS = 1.0


def holders(record_dir, task_id):
    """The pids of the processes that started `task_id` (the marker's .holding files)."""
    return [int(name.split(".")[1]) for name in os.listdir(record_dir)
            if name.startswith(f"{task_id}.") and name.endswith(".holding")]


def holder_now(record_dir, task_id):
    """("in task", pid) while a live process holds `task_id`, ("done", None) once it is
    completed, None before a process started it."""
    if task_id in completions(record_dir):
        return "done", None
    live = [pid for pid in holders(record_dir, task_id) if alive(pid)]
    return ("in task", live[0]) if live else None


def test_10000_tasks_survive_killed_workers_and_dispatchers_a_broker_restart_and_a_cut(
        node, proxy, broker, start_pool, record_dir, vhost,
        publish=publish_all, figure="10 000 tasks under faults"):
    """publish, figure: what test_10000_one_hop_tasks_... changes (defaults: not fixtures)."""
    total, rng = 10_000, random.Random(20261127)
    ids = [f"t{n:05d}" for n in range(total)]
    pool = start_pool(marker_config(record_dir, WORKERS), heartbeat=5)
    wait_for(lambda: broker.counts("worker_marker")[1] == WORKERS, 30,
             f"{WORKERS} workers consuming")
    # Faults, paced by progress (one every 1/30 of the tasks), not by the clock.
    faults = ["kill worker"] * 20 + ["kill dispatcher"] * 5 + ["cut connections"]
    rng.shuffle(faults)
    faults.insert(20, "restart broker")
    thresholds = [total * n // (len(faults) + 3) for n in range(1, len(faults) + 1)]
    # The tasks whose worker is killed in their middle: submitted as the test's own, the
    # same way in as the others.
    hold_ids = [f"hold{n:02d}" for n in range(faults.count("kill worker"))]
    submit_hold = broker.submit_one_hop if publish is publish_all_one_hop else broker.submit
    errors = []
    publisher = threading.Thread(target=publish, args=(vhost, node.port, ids, errors))
    started = time.monotonic()
    publisher.start()
    connections_cut = 0
    killed_in_task = []   # the tasks whose worker was killed while it held them
    for n, (fault, threshold) in enumerate(zip(faults, thresholds), 1):
        wait_for(lambda: sum(1 for _ in completions(record_dir)) >= threshold, 300,
                 f"{threshold} tasks completed before fault {n} ({fault})", interval=0.05)
        if fault == "kill worker":
            hold = hold_ids[len(killed_in_task)]
            submit_hold("marker", {"id": hold, "sleep": HOLD_SECONDS, "announce": True},
                        message_id=hold)
            state, pid = wait_for(lambda: holder_now(record_dir, hold), 120,
                                  lambda: f"a worker in task {hold}\n{pool.log()[-3000:]}",
                                  interval=0.01)
            assert state == "in task", f"{hold} was done before the test saw it started"
            killed_in_task.append(hold)
            os.kill(pid, 9)
        elif fault == "kill dispatcher":
            os.kill(wait_for(lambda: running_children(pool).get("dispatcher#0"), 60,
                             "a running dispatcher"), 9)
        elif fault == "cut connections":
            connections_cut = proxy.cut()
        else:
            publisher.join(300)  # the test's publisher talks to the node directly
            node.restart()
            broker.connect()
    publisher.join(300)
    assert not errors, errors
    # Every task is completed or dead-lettered: each dead letter of the run kept, by id, with
    # its reason; nothing in flight any more (a duplicate on its way is counted too).
    ledger = Ledger(ids + hold_ids, record_dir).settle(broker, 600,
                                                       idle=lambda: queues_idle(node))
    elapsed = time.monotonic() - started
    done = ledger.completions()
    # What these faults can cause. A killed worker's task is redelivered, never dead-lettered:
    # only a task that killed DELIVERY_LIMIT processes is (taskqueue's reason says so), and
    # each such needs that many deaths in one task: a worker killed, or each worker losing
    # its connection to the restart or the cut. Duplicates: what the processes those
    # faults ended held unsettled, each at most once more.
    worker_kills, dispatcher_kills = faults.count("kill worker"), faults.count("kill dispatcher")
    connection_faults = faults.count("restart broker") + faults.count("cut connections")
    ended_workers = worker_kills + connection_faults * WORKERS
    most_extra = window_bound(workers=ended_workers,
                              dispatchers=dispatcher_kills + connection_faults)
    problems = ledger.problems([delivery_limit_rule(DELIVERY_LIMIT, ended_workers)], most_extra,
                               done)
    # Each task whose worker was killed came back and ran again (redelivered, not dead-lettered)
    problems += [f"task {task_id}, its worker killed, never ran again: run by "
                 f"{holders(record_dir, task_id)}" for task_id in killed_in_task
                 if len(holders(record_dir, task_id)) < 2]
    FIGURES[figure] = {
        **ledger.figures(done),
        "duplicate outcomes allowed": most_extra,
        "worker kills": worker_kills,
        "each in the middle of a task of its own": len(killed_in_task),
        "dispatcher kills": dispatcher_kills,
        "broker restarts": faults.count("restart broker"),
        "connections cut at once": connections_cut,
        "seconds": round(elapsed, 1),
    }
    assert not problems, "\n".join(problems)
    assert pool.stop() == 0


def test_10000_one_hop_tasks_survive_killed_workers_and_dispatchers_a_broker_restart_and_a_cut(
        node, proxy, broker, start_pool, record_dir, vhost):
    """The same run, the tasks published one hop: the broker routes them into worker_marker
    (bound by the workers as they start), the dispatcher only sees what the alternate
    exchange sends it. The same faults, the same figures, nothing lost."""
    figure = "10 000 one-hop tasks under faults"
    test_10000_tasks_survive_killed_workers_and_dispatchers_a_broker_restart_and_a_cut(
        node, proxy, broker, start_pool, record_dir, vhost, publish=publish_all_one_hop,
        figure=figure)
    # Every task reached its worker one hop: none went through taskqueue and the dispatcher
    one_hop = completions(record_dir, ".onehop")
    FIGURES[figure]["completed one hop (routing key: the type)"] = len(one_hop)
    assert set(one_hop) == set(completions(record_dir))


#: The malformed kinds read as plain text, whose reasons show the expected shape.
PLAIN_KINDS = ("random bytes", "plain text", "10 MB plain text", "json array", "json number")

MALFORMED_KINDS = [
    # Without a content type, read as plain text: \x01 is in no worker type, and is
    # no '{' or blank in any encoding JSON allows (a NUL could start UTF-16 "{").
    ("random bytes", lambda r: b"\x01" + bytes(r.getrandbits(8) for _ in range(r.randint(0, 300))), {}),
    ("plain text without a space", lambda r: b"marker", {}),
    ("plain text with a leading space", lambda r: b" marker {}", {}),
    ("plain text with a bad type", lambda r: b"mark/er " + r.randbytes(r.randint(0, 50)),
     {"content_type": "text/plain; charset=utf-8"}),
    ("unknown content type", lambda r: b"marker {}", {"content_type": "application/xml"}),
    ("invalid utf-8", lambda r: b'{"worker_type": "marker", "workitem": "\xff\xfe"}', {}),
    ("json array", lambda r: json.dumps([r.random()]).encode(), {}),
    ("json number", lambda r: str(r.randint(0, 10**6)).encode(), {}),
    ("missing type", lambda r: b'{"workitem": {"id": "x"}}', {}),
    ("empty type", lambda r: b'{"worker_type": "", "workitem": 1}', {}),
    ("overlong type", lambda r: json.dumps({"worker_type": "m" * 300, "workitem": 1}).encode(), {}),
    ("number type", lambda r: b'{"worker_type": 42, "workitem": 1}', {}),
    ("wrong content type", lambda r: b'{"worker_type": "marker", "workitem": {"id": "x"}}',
     {"content_type": "text/plain"}),
    ("missing workitem", lambda r: b'{"worker_type": "marker"}', {}),
]


def test_1000_malformed_messages_are_dead_lettered_and_every_valid_one_completed(
        node, broker, start_pool, record_dir):
    rng = random.Random(7)
    pool = start_pool(marker_config(record_dir, processes=2))
    wait_for(lambda: broker.counts("worker_marker")[1] == 2, 30, "2 workers consuming")
    expected_dead, valid = {}, []
    for n in range(1000):
        kind, make, props = MALFORMED_KINDS[n % len(MALFORMED_KINDS)]
        body = make(rng)
        if n % 200 == 0:  # a few 10 MB bodies, parsed in full before they are refused
            body, kind = json.dumps(["x" * (10 * 2**20)]).encode(), "10 MB body"
            props = {"content_type": "application/json"}
        elif n % 200 == 100:  # and 10 MB of plain text without a space
            body, kind, props = b"m" * (10 * 2**20), "10 MB plain text", {}
        expected_dead[f"bad{n}"] = kind
        broker.publish_raw(body, message_id=f"bad{n}", **props)
        valid.append(f"ok{n}")
        broker.submit("marker", {"id": f"ok{n}"}, message_id=f"ok{n}")
        if n % 2:  # the specification's plain text, "<worker_type> <workitem>", no content type
            valid.append(f"plain{n}")
            broker.publish_raw(b'marker {"id": "plain%d"}' % n, message_id=f"plain{n}")
    reasons = {}

    def all_dead():
        for props, _ in broker.drain("taskqueue_dead"):
            reasons[props.message_id] = props.headers.get("x-taskqueue-reason")
        return len(reasons) >= len(expected_dead)
    wait_for(all_dead, 180, "every malformed message dead-lettered", interval=0.2)
    done = wait_for(lambda: len(completions(record_dir)) == len(valid) and completions(record_dir),
                    180, "every valid task completed")
    assert set(reasons) == set(expected_dead)
    assert all(reasons.values()), [k for k, v in reasons.items() if not v]
    plain = [k for k, kind in expected_dead.items() if kind.startswith(PLAIN_KINDS)]
    assert all(PLAIN_SHAPE in reasons[k] for k in plain), [reasons[k] for k in plain][:5]
    assert set(done) == set(valid)
    assert len(re.findall(r"dispatcher#0 pid=\d+ STARTING -> RUNNING", pool.log())) == 1
    FIGURES["1000 malformed messages"] = {
        "malformed published": len(expected_dead), "dead-lettered with a reason": len(reasons),
        "valid published": len(valid), "valid completed": len(done),
        "dispatcher restarts": 0,
        "reasons seen": sorted({r.split(":")[0] for r in reasons.values()})[:12],
    }
    assert pool.stop() == 0


def run_healthy_batch(broker, record_dir, prefix, count):
    started = time.monotonic()
    for n in range(count):
        broker.submit("marker", {"id": f"{prefix}{n}", "sleep": 0.01})
    wait_for(lambda: sum(1 for i in completions(record_dir) if i.startswith(prefix)) == count,
             120, f"the {prefix} batch")
    return time.monotonic() - started


def test_broken_plugins_beside_a_healthy_type_cost_it_nothing_and_under_20_percent_speed(
        node, broker, start_pool, record_dir):
    # Given a healthy type, first alone
    base = marker_config(record_dir, processes=2)
    broken = ("\n[brokenimport]\nworkers: 1\n\n[crasher]\nworkers: 1\n\n"
              "[hanger]\nworkers: 1\ntask_timeout: 1\n")
    pool = start_pool(base + broken)
    pool.wait_log(r"brokenimport#0 pid=\d+ STARTING -> QUARANTINED")
    wait_for(lambda: broker.counts("worker_marker")[1] == 2, 30, "2 healthy workers")
    run_healthy_batch(broker, record_dir, "warmup", 50)  # first runs pay for start-up
    for n in range(10):
        broker.submit("crasher", {"id": f"c{n}"}, message_id=f"crash{n}")
        broker.submit("hanger", {"id": f"h{n}"}, message_id=f"hang{n}")
    # Compare the healthy type's speed while its neighbours crash and hang...
    with_faults = run_healthy_batch(broker, record_dir, "busy", 300)
    # ... with its speed once they are done (dead-lettered) and quiet
    dead = {}

    def neighbours_dead():
        for props, _ in broker.drain("taskqueue_dead"):
            dead[props.message_id] = props.headers
        return len(dead) == 20
    wait_for(neighbours_dead, 300, "every crashing and hanging task dead-lettered", interval=0.5)
    quiet = run_healthy_batch(broker, record_dir, "quiet", 300)
    assert all(h["x-taskqueue-reason"].startswith("delivery limit 5 reached") for h in dead.values())
    assert any("killed by SIGABRT" in h.get("x-taskqueue-exit", "") for h in dead.values())
    assert any("(task_timeout)" in h.get("x-taskqueue-exit", "") for h in dead.values())
    assert len(completions(record_dir)) == 650  # the healthy type lost nothing
    pool.wait_log(r"hanger#0 pid=\d+ killed by SIGKILL \(task_timeout\)")
    pool.wait_log(r"crasher#0 pid=\d+ killed by SIGABRT")
    FIGURES["broken plugins beside a healthy type"] = {
        "healthy 300 tasks with broken neighbours (s)": round(with_faults, 2),
        "healthy 300 tasks, neighbours quiet (s)": round(quiet, 2),
        "slowdown": f"{(with_faults / quiet - 1) * 100:+.0f} %",
        "crashing and hanging tasks dead-lettered": len(dead),
    }
    assert with_faults < quiet * 1.2
    assert pool.stop() == 0


def test_heartbeats_detect_a_silent_broker_and_every_child_reconnects(
        node, proxy, broker, start_pool, record_dir):
    pool = start_pool(marker_config(record_dir, processes=2), heartbeat=2)
    wait_for(lambda: broker.counts("worker_marker")[1] == 2, 30, "2 workers consuming")
    # When the network goes silent (no FIN, no RST: packets just stop)
    frozen = proxy.freeze()
    # Then the missing heartbeats end each connection, and each child starts over
    pool.wait_log(r"marker#0 pid=\d+ exit 3", timeout=60)
    pool.wait_log(r"marker#1 pid=\d+ exit 3", timeout=60)
    pool.wait_log(r"dispatcher#0 pid=\d+ exit 3", timeout=60)
    for n in range(20):
        broker.submit("marker", {"id": f"after{n}"})
    wait_for(lambda: len(completions(record_dir)) == 20, 60, "20 tasks done after reconnecting")
    FIGURES["silent broker (frozen connections)"] = {"connections frozen": frozen,
                                                     "tasks done after": 20}
    assert pool.stop() == 0


def test_a_delayed_task_survives_a_stop_app_and_start_app_of_the_broker_during_its_wait(
        node, broker, start_pool, records):
    import pika
    import subprocess
    from support import recorder_config
    from taskqueue.broker import blocking
    from taskqueue.protocol import delays
    pool = start_pool(recorder_config(records), heartbeat=5)
    wait_for(lambda: broker.counts("worker_recorder")[1] == 1, 30, "the recorder consuming")
    # Given a task delayed 20 s (16 + 4: it waits in two levels), waiting in the first
    before = time.time()
    blocking.publish_delayed_blocking(broker.channel, broker.settings, "recorder",
                                      json.dumps({"id": "delayed"}).encode(),
                                      pika.BasicProperties(content_type="application/json"), 20)
    wait_for(lambda: broker.counts("taskqueue.delay.4")[0] == 1, 5, "the task in level 4")
    # When the broker's application stops and starts again during its wait
    for action in ("stop_app", "start_app"):
        subprocess.run(["rabbitmqctl", "-q", "-n", node.name, action], check=True, timeout=120)
    restarted = time.time() - before
    broker.connect()
    assert restarted < 18, f"the restart took {restarted:.1f}s: the test proves nothing"
    assert broker.counts("taskqueue.delay.4")[0] + broker.counts("taskqueue.delay.2")[0] == 1
    # Then the task reaches its worker, never before its delay
    def started():
        return [r for r in records.all("start") if r["id"] == "delayed"]
    [record] = wait_for(started, 120, lambda: f"the delayed task started\n{pool.log()[-3000:]}")
    FIGURES["a delayed task across stop_app/start_app"] = {
        "delay": 20, "broker back after (s)": round(restarted, 1),
        "started after (s)": round(record["time"] - before, 2)}
    assert record["time"] - before >= 20.0
    assert [broker.counts(q)[0] for q in delays.LEVEL_QUEUES] == [0] * delays.LEVELS
    assert pool.stop() == 0


def test_schedules_fire_again_after_a_broker_restart_no_slot_twice(node, broker, start_pool):
    from support import declare_one_hop
    from taskqueue.protocol import firings
    pool = start_pool('[DEFAULT]\nworkers: 0\n\n[schedules]\ntick: every 1s recorder\n',
                      command="workerpool", heartbeat=5)
    declare_one_hop(broker.channel)     # the tasks wait in taskqueue: no dispatcher runs here
    taken = []

    def fired(count):
        taken.extend(props.message_id for props, _ in broker.drain("taskqueue"))
        return len(taken) >= count
    wait_for(lambda: fired(3), 30, lambda: f"3 scheduled tasks\n{pool.log()[-3000:]}")
    # When the broker restarts (its queues and the stream are durable; the lead queue,
    # exclusive, goes with the scheduler's connection)
    before = len(taken)
    down = time.time()
    node.restart()
    back = time.time()
    broker.connect()
    # Then the scheduler takes the lead again and fires on: the latest slot missed once
    wait_for(lambda: fired(before + 3), 90,
             lambda: f"3 scheduled tasks after the restart\n{pool.log()[-3000:]}")
    slots = sorted(firings.slot_of_message_id(task) for task in taken)
    assert len(set(taken)) == len(taken), taken
    gap = [b - a for a, b in zip(slots, slots[1:]) if b - a > 1]
    first_after = min(s for s in slots if s >= int(back)) if any(s >= int(back) for s in slots) \
        else None
    FIGURES["schedules across a broker restart"] = {
        "broker down (s)": round(back - down, 1), "slots fired": len(taken),
        "slots missed (skipped, not fired late)": int(sum(g - 1 for g in gap)),
        "first slot fired after the broker was back (s)":
            None if first_after is None else round(first_after - back, 1)}
    assert pool.stop() == 0
