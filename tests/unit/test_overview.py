"""`taskqueue status`: judging what was gathered (exit codes) and the table (cli/status.py)."""
import os

import pytest

from taskqueue.cli import status
from taskqueue.cli.progress import format_duration
from taskqueue.supervision.lifecycle import ChildState
from taskqueue.supervision.snapshot import snapshot
from taskqueue.supervision.specs import ChildSpec
from taskqueue.supervision.supervisor import Supervisor

pytestmark = pytest.mark.timeout(10)

BROKER = "127.0.0.1:5672 vhost '/'"


def target(ctx):
    return 0


def answer_of(quarantined=False):
    """A supervisor's answer: a dispatcher, two recorders (one busy), maybe a quarantined type."""
    specs = [ChildSpec("dispatcher", 1, target, queue="taskqueue", kind="dispatcher"),
             ChildSpec("recorder", 2, target, queue="worker_recorder")]
    if quarantined:
        specs.append(ChildSpec("brokenimport", 1, target, queue="worker_brokenimport"))
    sup = Supervisor(specs)
    sup.started_at = 0.0
    for pid, slot in enumerate(sup.slots, 100):
        slot.state, slot.pid = ChildState.RUNNING, pid
    busy = sup.slots[1]
    busy.task, busy.task_started, busy.tasks_done = "f00d" * 10, 300.0, 4
    # Children on two nodes of a cluster; a third node lost 2.5 s ago
    sup.slots[0].broker = "10.0.0.1:5672 RabbitMQ 3.10.8, cluster rabbit@a"
    sup.slots[1].broker = "10.0.0.2:5672 RabbitMQ 3.10.8, cluster rabbit@a"
    sup.slots[2].broker = "10.0.0.1:5672 RabbitMQ 3.10.8, cluster rabbit@a"
    sup.broker_failures = {"10.0.0.3:5672": (310.0, "connection reset")}
    if quarantined:
        broken = sup.slots[3]
        broken.state, broken.pid, broken.timer_due = ChildState.QUARANTINED, None, 370.0
        broken.last_exit, broken.exited_at = "exit 4 (plugin failed to load)", 310.0
    return {"socket": "/run/taskqueue/taskqueue-run.sock", "error": None,
            **snapshot(sup, "taskqueue-run", now=312.5)}


LISTED = {"source": "rabbitmqctl", "error": None}


def view_of(supervisors, counts, broker_error=None, others=None, listing=LISTED):
    """As status.gather makes it; `others`: the counts of the worker queues only the
    broker's listing found."""
    expected = ["taskqueue", *sorted({g["queue"] for s in supervisors if not s["error"]
                                      for g in s["groups"] if g["kind"] == "worker"}),
                "taskqueue_dead"]
    queues = [expected[0], *sorted(set(expected[1:-1]) | set(others or {})), expected[-1]]
    view = {"status_dir": "/run/taskqueue", "supervisors": supervisors,
            "broker": {"address": BROKER, "error": broker_error}, "queue_listing": listing,
            "queues": status.queue_rows(queues, {**counts, **(others or {})}, supervisors,
                                          broker_error is None, expected)}
    view.update(status.assess(view))
    return view


HEALTHY_COUNTS = {"taskqueue": (0, 1), "worker_recorder": (5, 2), "taskqueue_dead": (2, 0)}


def test_everything_running_and_consumed_is_healthy():
    view = view_of([answer_of()], HEALTHY_COUNTS)
    assert (view["exit_code"], view["problems"], view["errors"]) == (status.HEALTHY, [], [])


def test_a_quarantined_group_and_its_queue_without_consumer_make_it_unhealthy():
    counts = dict(HEALTHY_COUNTS, worker_brokenimport=(3, 0))
    view = view_of([answer_of(quarantined=True)], counts)
    assert view["exit_code"] == status.UNHEALTHY
    assert view["problems"] == [
        "brokenimport is quarantined after exit 4 (plugin failed to load); retried in 57s or on "
        "reload (SIGHUP)",
        "queue worker_brokenimport has no consumer (3 message(s) waiting)"]


def test_a_worker_queue_that_does_not_exist_is_a_problem_the_dead_letter_queue_is_not():
    counts = {"taskqueue": (0, 1), "worker_recorder": None, "taskqueue_dead": None}
    view = view_of([answer_of()], counts)
    assert view["exit_code"] == status.UNHEALTHY
    assert view["problems"] == ["queue worker_recorder does not exist: nothing consumes it"]


def test_no_supervisor_answering_is_exit_3_and_names_the_directory_and_each_socket():
    gone = {"socket": "/run/taskqueue/taskqueue-run.sock", "error": "not running: ..."}
    view = view_of([gone], {"taskqueue": (0, 1), "taskqueue_dead": (0, 0)})
    assert view["exit_code"] == status.NO_SUPERVISOR
    assert view["problems"][0] == "/run/taskqueue/taskqueue-run.sock: not running: ..."
    assert view["errors"] == ["no supervisor answers in /run/taskqueue: is taskqueue running on "
                              "this host? (see [supervisor] status_dir)"]


def test_broker_unreachable_is_exit_4_even_with_a_quarantined_group_and_queues_are_not_judged():
    view = view_of([answer_of(quarantined=True)], {}, broker_error="cannot connect to the broker")
    assert view["exit_code"] == status.NO_BROKER
    assert view["errors"] == [f"broker {BROKER}: cannot connect to the broker"]
    assert [q["ready"] for q in view["queues"]] == [None] * 4
    assert view["problems"][0].startswith("brokenimport is quarantined")


def test_busy_here_counts_this_hosts_busy_children_per_worker_queue_only():
    rows = {q["name"]: q for q in view_of([answer_of()], HEALTHY_COUNTS)["queues"]}
    assert [rows[name]["busy_here"] for name in ("taskqueue", "worker_recorder", "taskqueue_dead")] == [
        None, 1, None]
    assert (rows["worker_recorder"]["ready"], rows["worker_recorder"]["consumers"]) == (5, 2)


def test_table_shows_groups_children_queues_and_problems():
    counts = dict(HEALTHY_COUNTS, worker_brokenimport=(3, 0))
    lines = status.render(view_of([answer_of(quarantined=True)], counts)).splitlines()
    assert lines[0] == f"taskqueue-run: pid {os.getpid()}, up 5m12s (/run/taskqueue/taskqueue-run.sock)"
    rows = [line.split() for line in lines]
    assert ["TYPE", "SUBGROUP", "USER", "WANTED", "RUNNING", "STATE", "RESTARTS", "RETRIES",
            "EXPIRED", "LAST", "EXIT"] in rows
    assert ["brokenimport", "-", "-", "1", "0", "quarantined", "0", "0", "0", "exit", "4",
            "(plugin", "failed", "to", "load),", "2.5s", "ago"] in rows
    assert ["recorder", "-", "-", "2", "2", "running", "0", "0", "0", "-"] in rows
    assert ["recorder#0", "101", "busy", "f00df00df00df00df00df00df00df00df...", "12s", "4",
            "10.0.0.2:5672"] in rows
    assert ["recorder#1", "102", "idle", "-", "-", "0", "10.0.0.1:5672"] in rows
    assert ["dispatcher#0", "100", "running", "-", "-", "-", "10.0.0.1:5672"] in rows
    assert ["brokenimport#0", "-", "quarantined", "retry", "in", "57s", "-", "0", "-"] in rows
    assert ["worker_brokenimport", "3", "0", "0"] in rows
    assert ["taskqueue_dead", "2", "-", "0"] in rows
    assert lines[-2:] == ["  brokenimport is quarantined after exit 4 (plugin failed to load); "
                          "retried in 57s or on reload (SIGHUP)",
                          "  queue worker_brokenimport has no consumer (3 message(s) waiting)"]


def test_table_shows_each_broker_the_children_use_and_each_that_failed_lately():
    lines = status.render(view_of([answer_of()], HEALTHY_COUNTS)).splitlines()
    rows = [line.split() for line in lines]
    assert ["brokers,", "as", "its", "children", "see", "them:"] in rows
    assert ["10.0.0.1:5672", "2", "RabbitMQ", "3.10.8,", "cluster", "rabbit@a", "-"] in rows
    assert ["10.0.0.2:5672", "1", "RabbitMQ", "3.10.8,", "cluster", "rabbit@a", "-"] in rows
    assert ["10.0.0.3:5672", "0", "-", "2.5s", "ago:", "connection", "reset"] in rows


def test_status_document_names_each_childs_broker_and_the_brokers_seen():
    answer = answer_of()
    children = {c["name"]: c["broker"] for g in answer["groups"] for c in g["children"]}
    assert children == {"dispatcher#0": "10.0.0.1:5672", "recorder#0": "10.0.0.2:5672",
                        "recorder#1": "10.0.0.1:5672"}
    assert answer["brokers"] == [
        {"address": "10.0.0.1:5672", "server": "RabbitMQ 3.10.8, cluster rabbit@a", "children": 2,
         "failed_ago": None, "failure": None},
        {"address": "10.0.0.2:5672", "server": "RabbitMQ 3.10.8, cluster rabbit@a", "children": 1,
         "failed_ago": None, "failure": None},
        {"address": "10.0.0.3:5672", "server": None, "children": 0, "failed_ago": 2.5,
         "failure": "connection reset"}]


def test_table_of_a_healthy_host_says_there_is_no_problem():
    text = status.render(view_of([answer_of()], HEALTHY_COUNTS))
    assert text.endswith("\nproblems: none\n")


@pytest.mark.parametrize("seconds, text", [
    (0.04, "0.0s"), (9.96, "10.0s"), (12.7, "12s"), (303, "5m03s"), (7500, "2h05m"),
    (273600, "3d04h")])
def test_durations_are_short_with_tenths_below_ten_seconds(seconds, text):
    assert format_duration(seconds, status.TENTHS_BELOW) == text


def test_a_worker_queue_only_the_broker_lists_is_a_problem_when_tasks_wait_in_it_unconsumed():
    others = {"worker_nosuchtype": (2, 0), "worker_elsewhere": (7, 3)}
    view = view_of([answer_of()], HEALTHY_COUNTS, others=others)
    assert view["exit_code"] == status.UNHEALTHY
    assert view["problems"] == ["queue worker_nosuchtype has no consumer (2 message(s) waiting)"]
    rows = {q["name"]: q for q in view["queues"]}
    assert [q["name"] for q in view["queues"]] == [
        "taskqueue", "worker_elsewhere", "worker_nosuchtype", "worker_recorder", "taskqueue_dead"]
    assert (rows["worker_nosuchtype"]["expected"], rows["worker_recorder"]["expected"]) == (
        False, True)
    text = status.render(view)
    assert "  worker_nosuchtype  2      0          0\n" in text
    assert "not listed" not in text


def test_a_worker_queue_only_the_broker_lists_is_no_problem_once_consumed_or_empty():
    others = {"worker_elsewhere": (7, 3), "worker_old": (0, 0)}
    view = view_of([answer_of()], HEALTHY_COUNTS, others=others)
    assert (view["exit_code"], view["problems"]) == (status.HEALTHY, [])


def test_queues_that_could_not_be_listed_are_said_in_the_table_not_judged():
    listing = {"source": None, "error": "rabbitmqctl is not on PATH (as root on the broker's "
                                        "host, status lists them all)"}
    view = view_of([answer_of()], HEALTHY_COUNTS, listing=listing)
    assert (view["exit_code"], view["problems"], view["errors"]) == (status.HEALTHY, [], [])
    assert ("  taskqueue_dead   2      -          0\n"
            "  (other worker queues not listed: rabbitmqctl is not on PATH (as root on the "
            "broker's host, status lists them all))\n\nproblems: none\n") in status.render(view)


def test_the_delayed_tasks_are_the_ready_ones_of_the_delay_queues_that_exist():
    assert status.delayed_tasks([None] * 20) == 0
    assert status.delayed_tasks([(3, 0), None, (0, 0), (2, 0)] + [None] * 16) == 5


def test_table_says_how_many_delayed_tasks_wait_and_says_nothing_when_the_broker_was_not_asked():
    view = dict(view_of([answer_of()], HEALTHY_COUNTS), delayed=7)
    assert "\ndelayed tasks waiting: 7 (in taskqueue.delay.*)\n" in status.render(view)
    unasked = dict(view_of([answer_of()], {}, broker_error="refused"), delayed=None)
    assert "delayed tasks" not in status.render(unasked)


def test_rate_limits_show_each_bucket_its_current_rate_and_tokens_ready():
    from taskqueue.protocol.ratelimits import Bucket, RateLimit
    every, here = Bucket("resize", RateLimit(5, "s")), Bucket("resize", RateLimit(2, "m"), "web1")
    fresh = Bucket("thumb", RateLimit(1, "h"))
    counts = {every.token_queue: (1, 0), every.wait_queue: (4, 0),
              here.token_queue: (2, 0), here.wait_queue: (0, 0),
              fresh.token_queue: None, fresh.wait_queue: None}
    view = view_of([answer_of()], HEALTHY_COUNTS)
    view["rate_limits"] = status.rate_rows([every, here, fresh], counts, True)
    lines = status.render(view).splitlines()
    start = lines.index("rate limits (the current rate: starts in the last period):")
    assert [line.split() for line in lines[start + 1:start + 4]] == [
        ["TYPE", "LIMIT", "WHERE", "CURRENT", "TOKENS", "READY"],
        ["resize", "5/s", "all", "hosts", "4/s", "1"],
        ["resize", "2/m", "web1", "0/m", "2"]]
    assert lines[start + 4].split()[:6] == ["thumb", "1/h", "all", "hosts", "no", "bucket"]


def test_a_high_queue_is_a_problem_only_when_tasks_wait_in_it_unconsumed():
    # Consumed, or empty (its pool stopped, or an older one's): no problem
    for count in [(3, 2), (0, 0)]:
        view = view_of([answer_of()], HEALTHY_COUNTS, others={"worker_recorder+high": count})
        assert (view["exit_code"], view["problems"]) == (status.HEALTHY, [])
    # Tasks waiting with no consumer: an older pool, which consumes worker_recorder only
    view = view_of([answer_of()], HEALTHY_COUNTS, others={"worker_recorder+high": (4, 0)})
    assert view["exit_code"] == status.UNHEALTHY
    problem, = view["problems"]
    assert problem.startswith("queue worker_recorder+high has no consumer (4 message(s) "
                              "waiting); workers of an older taskqueue consume worker_recorder "
                              "only")
    rows = {q["name"]: q for q in view["queues"]}
    assert rows["worker_recorder+high"]["busy_here"] is None    # a child names its type only
    assert rows["worker_recorder"]["busy_here"] == 1


def test_status_asks_for_the_high_queue_of_each_worker_queue():
    assert status.high_queues(["taskqueue", "worker_a", "worker_b.c", "taskqueue_dead"]) == [
        "worker_a+high", "worker_b.c+high"]


def test_the_queues_of_a_type_busy_here_are_no_problem_without_consumer():
    # Its workers take one task at a time and consume nothing while they run one
    counts = dict(HEALTHY_COUNTS, **{"worker_recorder": (5, 0)})
    view = view_of([answer_of()], counts, others={"worker_recorder+high": (2, 0)})
    assert (view["exit_code"], view["problems"]) == (status.HEALTHY, [])
