"""Cancelling tasks on the real broker (docs/04 "Cancelling a task", docs/06 "Cancelling
tasks"): a queued, a delayed and a running task; a pool started after the cancel; two
pools; `taskqueue cancel` on unknown and finished ids; `taskqueue status`; hostile
content in the cancels stream and hostile ids."""
import json
import os
import re
import subprocess
import time

import pika
import pytest

from support import BROKER_HOST, TASKQUEUE, recorder_config, stream_events, wait_for
from taskqueue.protocol import cancels

pytestmark = pytest.mark.timeout(120)

#: A worker's group with a short grace for a cancelled running task.
GRACE = "stop_timeout: 2\n"


def taskqueue(pool, *args, timeout=30):
    return subprocess.run([TASKQUEUE, *args, "--config", pool.config_path],
                          capture_output=True, text=True, timeout=timeout)


def kinds(vhost, task_id):
    return [event["event"] for event in stream_events(vhost, task_id)]


def cancelled_event(vhost, task_id):
    return wait_for(lambda: [e for e in stream_events(vhost, task_id)
                             if e["event"] == "cancelled"], 10, f"the cancelled event of {task_id}")


def serving(broker, start_pool, body, consumers=1):
    pool = start_pool(body)
    wait_for(lambda: broker.counts("worker_recorder")[1] >= consumers, 20,
             "the recorder consumers")
    return pool


def test_queued_and_delayed_tasks_cancelled_never_start_and_are_recorded(
        broker, start_pool, records, client, vhost, workdir):
    # Given a worker held by a task, one task queued behind it and one delayed 2 s
    pool = serving(broker, start_pool, recorder_config(records, extra=GRACE))
    gate = os.path.join(workdir, "gate")
    client.submit("recorder", {"id": "holder", "gate": gate})
    queued = client.submit("recorder", {"id": "queued"})
    delayed = client.submit("recorder", {"id": "delayed"}, delay=2)
    client.submit("recorder", {"id": "kept"})
    # When both are cancelled with the command line, then the worker is let go
    out = taskqueue(pool, "cancel", queued, delayed)
    assert out.returncode == 0, out.stderr
    assert re.search(rf"^{queued}: cancelling \(last: submitted on ", out.stdout, re.M), out.stdout
    assert re.search(rf"^{delayed}: cancelling", out.stdout, re.M), out.stdout
    open(gate, "w").close()
    # Then neither ever starts; each is recorded cancelled; the others run
    wait_for(lambda: {"holder", "kept"} <= set(records.ids()), 20, "holder and kept done")
    for task_id in (queued, delayed):
        event = cancelled_event(vhost, task_id)[0]
        assert event["reason"] == "cancelled before it started"
    pool.wait_log(rf"task {delayed} \(delivery \d+\) not run: cancelled before it started")
    assert not {"queued", "delayed"} & set(records.ids("start"))
    wait_for(lambda: broker.counts("worker_recorder") == (0, 1), 10, "an empty worker queue")
    # Settled: nothing pending for status
    status = json.loads(taskqueue(pool, "status", "--json").stdout)
    wait_for(lambda: json.loads(taskqueue(pool, "status", "--json").stdout)["cancels"]
             ["pending"] == 0, 10, "no cancel pending")
    assert status["cancels"]["error"] is None
    assert pool.stop() == 0


@pytest.mark.parametrize("work", [{"steps": 600}, {"sleep": 60}], ids=["python", "in-c"])
def test_running_60s_task_cancelled_is_stopped_settled_and_not_redelivered(
        broker, start_pool, records, client, vhost, work):
    # Given a 60 s task running (in Python steps, or in one sleep in C)
    pool = serving(broker, start_pool, recorder_config(records, extra=GRACE))
    task_id = client.submit("recorder", {"id": "long", **work})
    started = wait_for(lambda: records.all("start"), 20, "the long task started")
    pid = started[0]["pid"]
    # When it is cancelled
    began = time.monotonic()
    client.cancel(task_id)
    # Then it is settled at once (acked, a cancelled event), its process replaced: at
    # once for a task in Python (its finally ran), after stop_timeout for one in C
    event = cancelled_event(vhost, task_id)[0]
    assert event["reason"].startswith("cancelled after ")
    pool.wait_log(rf"recorder#0 pid={pid} exit 8 \(replaced: its running task was cancelled\)",
                  timeout=15)
    took = time.monotonic() - began
    assert took < (2 if "steps" in work else 6), took
    if "steps" in work:
        assert records.ids("interrupted") == ["long"]
    pool.wait_log(r"recorder#0 pid=\d+ STARTING -> RUNNING", count=2)
    wait_for(lambda: broker.counts("worker_recorder") == (0, 1), 10, "an empty worker queue")
    # Not redelivered: the task started once, never finished; the replacement runs others
    client.submit("recorder", {"id": "after"})
    wait_for(lambda: "after" in records.ids(), 20, "a task after the cancel")
    assert [r["id"] for r in records.all("start")].count("long") == 1
    assert "long" not in records.ids()
    assert kinds(vhost, task_id).count("started") == 1
    assert "during task" not in pool.log()      # not a death of the task
    assert pool.stop() == 0


def test_pool_started_after_the_cancel_and_two_pools_honour_it(
        broker, start_pool, records, client, vhost):
    # Given 20 tasks cancelled (their ids chosen, as any publisher may) while no pool runs
    ids = [f"cancelled-{n}" for n in range(20)]
    client.cancel(*ids)
    # When two supervisors start, each with two workers, and the tasks come once all four
    # consume (tasks queued before would go to whichever pool was first, all of them
    # when the machine is loaded: one pool then settled none, and the test proved nothing)
    pools = [serving(broker, start_pool, recorder_config(records, processes=2))
             for _ in range(2)]
    wait_for(lambda: broker.counts("worker_recorder")[1] == 4, 30, "four recorder consumers")
    for task_id in ids:
        broker.submit_one_hop("recorder", {"id": task_id}, message_id=task_id)
        broker.submit_one_hop("recorder", {"id": f"kept-{task_id}"}, message_id=f"k-{task_id}")
    # Then the 20 others run, the cancelled none, and both pools settled some as cancelled
    wait_for(lambda: len(records.ids()) == 20, 30, "the 20 kept tasks done")
    wait_for(lambda: broker.counts("worker_recorder")[0] == 0, 10, "an empty worker queue")
    assert not [i for i in records.ids("start") if i.startswith("cancelled-")]
    for pool in pools:
        assert re.search(r"not run: cancelled before it started", pool.log()), pool.log()[-2000:]
    for task_id in ids:
        cancelled_event(vhost, task_id)
    for pool in pools:
        assert pool.stop() == 0


def test_cancel_of_an_unknown_or_finished_id_says_so_and_exits_0(
        broker, start_pool, records, client):
    pool = serving(broker, start_pool, recorder_config(records))
    finished = client.submit("recorder", {"id": "finished"})
    wait_for(lambda: "finished" in records.ids(), 20, "the task done")
    wait_for(lambda: "done" in taskqueue(pool, "task", finished).stdout, 10, "its done event")
    unknown = "0190000000007000800000000000beef"
    out = taskqueue(pool, "cancel", finished, unknown)
    assert out.returncode == 0, out.stderr
    assert re.search(rf"^{finished}: finished \(done on \S+\): not cancelled$", out.stdout,
                     re.M), out.stdout
    assert re.search(rf"^{unknown}: unknown \(no event since .*\): cancelling all the same",
                     out.stdout, re.M), out.stdout
    # The unknown one is pending (no worker settled it); the finished one was not sent
    status = taskqueue(pool, "status")
    assert "cancels pending: 1 (not yet settled by a worker; 1 record(s) in " \
        "taskqueue_cancels)" in status.stdout, status.stdout
    assert pool.stop() == 0


@pytest.mark.parametrize("bad, words", [
    ("a b", "printable characters without spaces"),
    ("x" * 201, "1 to 200 characters, not 201"),
    ("\x1b[31mred", "printable characters without spaces"),
    ("", "1 to 200 characters, not 0"),
])
def test_cancel_refuses_an_id_that_names_no_task_and_sends_nothing(
        broker, start_pool, records, bad, words):
    pool = serving(broker, start_pool, recorder_config(records))
    out = taskqueue(pool, "cancel", "good-id", bad)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "task id 2 (" in out.stderr and words in out.stderr, out.stderr
    assert "\x1b" not in out.stderr
    status = taskqueue(pool, "status", "--json")
    assert json.loads(status.stdout)["cancels"]["records"] == 0
    assert pool.stop() == 0


def publish_junk(vhost, bodies):
    connection = pika.BlockingConnection(pika.ConnectionParameters(BROKER_HOST, virtual_host=vhost))
    channel = connection.channel()
    channel.confirm_delivery()
    for body in bodies:
        channel.basic_publish("", cancels.STREAM, body)
    connection.close()


def test_junk_in_the_cancels_stream_is_counted_and_ignored(
        broker, start_pool, records, client, vhost):
    # Given junk published into the stream, as anyone who may publish to the vhost can,
    # before a pool starts and while it runs
    junk = [b"\xff\xfe" * 100, b"not json", b"[1,2]", b"{}", os.urandom(2**20),
            json.dumps({"cancel": "a b"}).encode(), json.dumps({"cancel": "x" * 5000}).encode(),
            json.dumps({"cancel": 42}).encode(), json.dumps({"cancel": "x", "settled": "x"}).encode(),
            b'{"cancel": ' * 10000, json.dumps({"cancel": "\u202eevil"}).encode()]
    client.cancel("first-cancel")       # the stream exists from here on
    publish_junk(vhost, junk)
    pool = serving(broker, start_pool, recorder_config(records))
    publish_junk(vhost, junk)
    # When a real cancel follows the junk, and its task comes
    client.cancel("real-cancel")
    broker.submit_one_hop("recorder", {"id": "real-cancel"}, message_id="real-cancel")
    broker.submit_one_hop("recorder", {"id": "fine"}, message_id="fine")
    # Then the worker honours it, runs the other, warns once, and stays up
    wait_for(lambda: "fine" in records.ids(), 20, "the other task done")
    cancelled_event(vhost, "real-cancel")
    assert "real-cancel" not in records.ids("start")
    assert pool.log().count("holds messages that are no cancel records") == 1
    assert "Traceback" not in pool.log()
    status = json.loads(taskqueue(pool, "status", "--json").stdout)["cancels"]
    assert status["junk"] == 2 * len(junk) and status["error"] is None, status
    assert status["pending"] == 1, status     # first-cancel: its task never came
    # A pool started now reads the junk too, and honours the cancel
    pool.stop()
    later = serving(broker, start_pool, recorder_config(records))
    broker.submit_one_hop("recorder", {"id": "real-cancel"}, message_id="real-cancel")
    later.wait_log(r"task real-cancel \(delivery \d+\) not run: cancelled before it started")
    assert later.stop() == 0


def connection_names(vhost):
    """The names (client property connection_name) of the connections to `vhost`."""
    out = subprocess.run(["rabbitmqctl", "-q", "list_connections", "--no-table-headers",
                          "vhost", "client_properties"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return sorted(m.group(1) for line in out.splitlines() if line.split("\t")[0] == vhost
                  for m in [re.search(r'"connection_name","([^"]*)"', line)] if m)


def test_a_workers_events_and_cancels_share_one_side_connection(
        broker, start_pool, records, client, vhost):
    # Given a pool of two worker processes, serving
    pool = serving(broker, start_pool, recorder_config(records, processes=2), consumers=2)
    # Then each holds its session and one side connection for its events and its cancels
    # reader (broker/sideline.py): two, not three
    wanted = [f"taskqueue worker recorder#{n}{end}" for n in (0, 1)
              for end in ("", " events+cancels")]
    wait_for(lambda: [n for n in connection_names(vhost) if n.startswith("taskqueue worker")]
             == wanted, 20, lambda: f"{wanted}, not {connection_names(vhost)}")
    # And a task's events are written on it (the cancels read there: the first test)
    task = client.submit("recorder", {"id": "plain"})
    wait_for(lambda: {"started", "done"} <= set(kinds(vhost, task)), 20, "its events")
    assert pool.stop() == 0
