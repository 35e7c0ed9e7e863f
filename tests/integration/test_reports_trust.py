"""A child reports only about itself (issue 20, item 3).

Hostile plugin code, running as another user (bifh1), writes forged lines on
its report pipe (tests/plugins/tqtest/recorder.py `forge`), in the format of
fe425d5 (`<pid> <event> ...`, naming the root child's pid) and in today's
(`<event> ...`, each child on a pipe of its own). Neither may touch another
child, grow the supervisor, or put control characters into `taskqueue status`.
"""
import json
import os
import subprocess
import time

import pytest

from support import TASKQUEUE, system_users, wait_for

HOSTILE = "bifh1"
TASK_TIMEOUT = 2


@pytest.fixture(scope="module")
def hostile_user():
    with system_users(users=(HOSTILE,)):
        yield


def config(records):
    return (f"[DEFAULT]\nworkers: 0\nrecord_dir: {records.path}\ntask_timeout: {TASK_TIMEOUT}\n\n"
            f"[recorder]\nworkers: 1\n\n[recorder2]\nworkers: 1\nuser: {HOSTILE}\n")


def uid_of(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Uid:"))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.fixture
def pool(hostile_user, broker, start_pool, records):
    pool = start_pool(config(records), command="workerpool")
    wait_for(lambda: broker.counts("worker_recorder")[1] == 1, 15, "the victim consuming")
    wait_for(lambda: broker.counts("worker_recorder2")[1] == 1, 15, "the hostile child consuming")
    children = {uid_of(pid): pid for pid in pool.children()}
    pool.victim = children[0]
    pool.hostile = children[next(uid for uid in children if uid != 0)]
    return pool


def forged(pid, *lines):
    """Each line in both formats: fe425d5's naming `pid`, and today's."""
    return "".join(f"{pid} {line}\n{line}\n" for line in lines)


def forge(broker, records, task_id, text, repeat=1):
    broker.publish_raw(json.dumps({"id": task_id, "forge": text, "forge_repeat": repeat}).encode(),
                       queue="worker_recorder2")
    wait_for(lambda: task_id in records.ids(), 60, f"the forger's task {task_id} done")


def never(predicate, seconds):
    """True when `predicate` stayed false for `seconds` (polled): the negative of wait_for."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return False
        time.sleep(0.05)
    return True


def test_a_busy_line_naming_another_child_does_not_get_it_killed(pool, broker, records):
    # Seen on fe425d5: the root child was SIGKILLed when the forged task's task_timeout ran out.
    forge(broker, records, "f1", forged(pool.victim, "busy victim-task"))
    assert never(lambda: "killing the process" in pool.log(), TASK_TIMEOUT + 2), pool.log()
    assert os.path.exists(f"/proc/{pool.victim}")
    broker.publish_raw(b'{"id": "v1"}', queue="worker_recorder")
    (done,) = wait_for(lambda: records.all() and [r for r in records.all() if r["id"] == "v1"],
                       15, "the victim's own task done")
    assert done["pid"] == pool.victim
    assert pool.stop() == 0


def test_a_done_line_naming_another_child_does_not_cancel_its_task_timeout(pool, broker, records):
    # Given the victim in a task longer than its task_timeout
    broker.publish_raw(json.dumps({"id": "slow", "sleep": 30}).encode(), queue="worker_recorder")
    wait_for(lambda: "slow" in records.ids("start"), 15, "the slow task started")
    # When the hostile child says the victim is done
    forge(broker, records, "f2", forged(pool.victim, "done ack 0.1"))
    # Then the victim's timer still runs (fe425d5: cancelled, the task ran on)
    pool.wait_log(r"recorder#0 pid=\d+: task \S+ still running after task_timeout", timeout=10)
    assert pool.stop() == 0


def test_a_line_without_newline_does_not_grow_the_supervisor_and_reports_resume_after_it(
        pool, broker, records):
    # Seen on fe425d5: the supervisor grew to 20 MiB in 2.7 s, copying quadratically.
    before = rss_kib(pool.pid)
    forge(broker, records, "f3", "x", repeat=20 * 2**20)
    assert rss_kib(pool.pid) - before < 8 * 1024
    # Its next line is read again: its next task past task_timeout is timed and killed.
    forge_and_hang = json.dumps({"id": "hang", "forge": "\n", "sleep": 30})
    broker.publish_raw(forge_and_hang.encode(), queue="worker_recorder2")
    pool.wait_log(r"recorder2#0 pid=\d+: task \S+ still running after task_timeout", timeout=10)
    assert pool.stop() == 0


def test_forged_broker_reports_stay_bounded_and_printable_in_status(pool, broker, records):
    lines = [f"unreachable host{n}.example:5672 refused" for n in range(5000)]
    lines.append("broker 127.0.0.1:5672 \x1b]0;owned\x07RabbitMQ")
    forge(broker, records, "f4", forged(pool.hostile, *lines))
    out = subprocess.run([TASKQUEUE, "status", "--json", "--config", pool.config_path],
                         capture_output=True, text=True, timeout=60)
    doc = json.loads(out.stdout)
    brokers = doc["supervisors"][0]["brokers"]
    assert len(brokers) <= 65, len(brokers)     # fe425d5: 5 001
    text = subprocess.run([TASKQUEUE, "status", "--config", pool.config_path],
                          capture_output=True, text=True, timeout=60).stdout
    assert "\x1b" not in text and "\x07" not in text
    assert pool.stop() == 0
