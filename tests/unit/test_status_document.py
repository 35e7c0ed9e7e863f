"""What a supervisor answers on its status socket, built from its slots (status.snapshot)."""
import os

import pytest

from taskqueue.supervision.lifecycle import ChildState
from taskqueue.supervision.snapshot import group_state, snapshot, socket_path
from taskqueue.supervision.specs import ChildSpec
from taskqueue.supervision.supervisor import Supervisor

pytestmark = pytest.mark.timeout(10)

S = ChildState


def target(ctx):
    return 0


def supervisor():
    return Supervisor([ChildSpec("dispatcher", 1, target, queue="taskqueue", kind="dispatcher"),
                       ChildSpec("worker2/bifh1", 2, target, user="bifh1", queue="worker_worker2"),
                       ChildSpec("crasher", 1, target, queue="worker_crasher")])


def test_socket_is_named_like_the_init_scripts_pidfile():
    assert socket_path("/run/taskqueue", "workerpool") == "/run/taskqueue/taskqueue-workerpool.sock"


@pytest.mark.parametrize("states, expected", [
    ([S.RUNNING, S.RUNNING], "running"),
    ([S.RUNNING, S.STARTING], "starting"),
    ([S.RUNNING, S.BACKOFF, S.STARTING], "backoff"),
    ([S.BACKOFF, S.QUARANTINED], "quarantined"),
    ([S.STOPPING, S.RUNNING], "stopping"),
    ([S.STOPPED], "stopped"),
    ([], "stopped"),
])
def test_a_group_is_in_the_worst_state_of_its_children(states, expected):
    assert group_state(states) == expected


def test_snapshot_describes_groups_and_children_from_the_slots():
    # Given a supervisor whose slots are in various states
    sup = supervisor()
    dispatcher, busy, idle, crasher = sup.slots
    sup.started_at = 100.0
    dispatcher.state, dispatcher.pid = S.RUNNING, 11
    busy.state, busy.pid, busy.task, busy.task_started, busy.tasks_done = S.RUNNING, 12, "m-1", 140.0, 7
    busy.broker = "127.0.0.1:5782 RabbitMQ 3.10.8, cluster rabbit@a"
    idle.state, idle.pid, idle.tasks_done, idle.restarts = S.RUNNING, 13, 3, 2
    idle.retries = 4
    idle.last_exit, idle.exited_at = "killed by SIGKILL", 120.0
    crasher.state, crasher.timer_due, crasher.restarts = S.QUARANTINED, 190.0, 9
    crasher.last_exit, crasher.exited_at = "exit 4 (plugin failed to load)", 130.0
    # When it is asked at t=145
    doc = snapshot(sup, "taskqueue-run", now=145.0)
    # Then
    assert doc["format"] == 1
    assert doc["supervisor"] == {"name": "taskqueue-run", "pid": os.getpid(), "version": "0.1.0",
                                 "uptime": 45.0, "stopping": False}
    dispatcher_group, crasher_group, worker_group = doc["groups"]   # the dispatcher first
    assert dispatcher_group["kind"] == "dispatcher" and dispatcher_group["queue"] == "taskqueue"
    assert worker_group == {
        "name": "worker2/bifh1", "kind": "worker", "type": "worker2", "subgroup": "bifh1",
        "user": "bifh1", "queue": "worker_worker2", "processes": 2, "running": 2, "busy": 1,
        "state": "running", "restarts": 2, "tasks_done": 10, "retries": 4, "expired": 0,
        "last_exit": "killed by SIGKILL", "last_exit_ago": 25.0,
        "children": [
            {"name": "worker2/bifh1#0", "pid": 12, "state": "running", "task": "m-1",
             "task_seconds": 5.0, "tasks_done": 7, "restarts": 0, "last_exit": None, "retry_in": None,
             "broker": "127.0.0.1:5782"},
            {"name": "worker2/bifh1#1", "pid": 13, "state": "running", "task": None,
             "task_seconds": None, "tasks_done": 3, "restarts": 2, "last_exit": "killed by SIGKILL",
             "retry_in": None, "broker": None},
        ]}
    assert crasher_group["state"] == "quarantined" and crasher_group["running"] == 0
    assert crasher_group["last_exit"] == "exit 4 (plugin failed to load)"
    assert crasher_group["children"][0]["retry_in"] == 45.0


def test_group_last_exit_is_the_latest_of_its_children():
    sup = supervisor()
    _, first, second, _ = sup.slots
    first.last_exit, first.exited_at = "exit 3 (broker connection failed or lost)", 50.0
    second.last_exit, second.exited_at = "killed by SIGABRT", 40.0
    group = snapshot(sup, "x", now=60.0)["groups"][2]
    assert (group["last_exit"], group["last_exit_ago"]) == (
        "exit 3 (broker connection failed or lost)", 10.0)


def test_a_group_removed_by_a_reload_shows_its_stopping_children_and_wants_none():
    sup = supervisor()
    sup.specs = sup.specs[:2]          # crasher removed from the config
    crasher = sup.slots[3]
    crasher.state, crasher.retired = S.STOPPING, True
    group = snapshot(sup, "x", now=1.0)["groups"][1]
    assert (group["name"], group["processes"], group["state"]) == ("crasher", 0, "stopping")
