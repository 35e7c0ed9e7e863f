"""`taskqueue status`: running supervisors asked on their sockets, the real broker asked
for its queues, and what the command prints and exits with."""
import grp
import json
import os
import re
import socket
import stat
import subprocess
import time

import pytest

from netfaults import TcpProxy
from support import TASKQUEUE, config_text, recorder_config, wait_for

STATUS_GROUP = "taskqueue"


def status(config_path, *args):
    return subprocess.run([TASKQUEUE, "status", "--config", config_path, *args],
                          capture_output=True, text=True, timeout=60)


def status_json(config_path):
    out = status(config_path, "--json")
    return out.returncode, json.loads(out.stdout)


def groups_of(doc, supervisor=0):
    return {group["name"]: group for group in doc["supervisors"][supervisor]["groups"]}


def queues_of(doc):
    return {queue["name"]: queue for queue in doc["queues"]}


def busy_child(config_path, task):
    """The child handling `task`, once the supervisor has heard of it."""
    _, doc = status_json(config_path)
    return next((child for group in doc["supervisors"][0]["groups"] for child in group["children"]
                 if child["task"] == task), None)


def test_status_shows_a_quarantined_type_a_busy_child_and_the_queues_and_exits_1(
        broker, start_pool, records):
    # Given a pool with a healthy type of 2 processes and one whose plugin cannot load
    pool = start_pool(recorder_config(records, processes=2) + "\n[brokenimport]\nworkers: 1\n")
    pool.wait_log(r"brokenimport#0 pid=\d+ STARTING -> QUARANTINED")
    wait_for(lambda: broker.counts("worker_recorder")[1] == 2, 15, "2 recorder consumers")
    wait_for(lambda: broker.counts("taskqueue")[1] == 1, 15, "the dispatcher consuming")
    # and a long task in the hands of one recorder, 3 tasks waiting for the broken type
    broker.submit("recorder", {"id": "long", "sleep": 60}, message_id="long-task-1")
    for n in range(3):
        broker.submit("brokenimport", {"id": f"b{n}"})
    started = wait_for(lambda: records.all("start"), 15, "the long task to start")
    wait_for(lambda: broker.counts("worker_brokenimport")[0] == 3, 15, "3 tasks waiting")
    first = wait_for(lambda: busy_child(pool.config_path, "long-task-1"), 10, "the busy child")

    # When status is asked for JSON
    code, doc = status_json(pool.config_path)
    # Then it exits 1 and says what the supervisor and the broker know
    assert code == 1
    assert doc["supervisors"][0]["error"] is None
    assert doc["supervisors"][0]["supervisor"]["name"] == "taskqueue-run"
    assert doc["supervisors"][0]["supervisor"]["pid"] == pool.pid
    groups = groups_of(doc)
    assert sorted(groups) == ["brokenimport", "dispatcher", "recorder"]
    broken = groups["brokenimport"]
    assert (broken["state"], broken["processes"], broken["running"]) == ("quarantined", 1, 0)
    assert broken["last_exit"] == "exit 4 (plugin failed to load)"
    assert 0 < broken["children"][0]["retry_in"] <= 60
    recorder = groups["recorder"]
    assert (recorder["state"], recorder["processes"], recorder["running"], recorder["busy"]) == (
        "running", 2, 2, 1)
    child = next(c for c in recorder["children"] if c["task"] == "long-task-1")
    assert child["pid"] == started[0]["pid"]
    assert child["task_seconds"] > first["task_seconds"]    # its elapsed time runs
    queues = queues_of(doc)
    assert (queues["worker_brokenimport"]["ready"], queues["worker_brokenimport"]["consumers"]) == (3, 0)
    assert (queues["worker_recorder"]["consumers"], queues["worker_recorder"]["busy_here"]) == (2, 1)
    assert queues["taskqueue"]["consumers"] == 1
    assert queues["taskqueue_dead"]["exists"] is True
    assert doc["exit_code"] == 1 and doc["errors"] == []
    assert any(p.startswith("brokenimport is quarantined after exit 4") for p in doc["problems"])
    assert "queue worker_brokenimport has no consumer (3 message(s) waiting)" in doc["problems"]

    # When status is asked for the table
    out = status(pool.config_path)
    # Then the same facts are in its lines
    assert out.returncode == 1, out.stderr
    text = out.stdout
    assert re.search(r"^  brokenimport +- +- +1 +0 +quarantined +0 +0 +0 +exit 4 \(plugin failed to "
                     r"load\), [\d.]+s ago$", text, re.M), text
    # (Restarts may be 1: a child that met its just-declared quorum queue still
    # starting (541) exits 3 and is replaced; the count and last exit say so.)
    assert re.search(rf"^  recorder +- +- +2 +2 +running +{recorder['restarts']} +0 +0 +"
                     rf"{re.escape(recorder['last_exit'] or '-')}", text, re.M), text
    # (BROKER: the node each child is connected to; none for one that does not run)
    assert re.search(rf"^  recorder#\d +{child['pid']} +busy +long-task-1 +[\d.]+s +0 "
                     rf"+127\.0\.0\.1:5672$", text, re.M), text
    assert re.search(r"^  recorder#\d +\d+ +idle +- +- +0 +127\.0\.0\.1:5672$", text, re.M), text
    assert re.search(r"^  brokenimport#0 +- +quarantined +retry in \d+s +- +0 +-$", text, re.M), text
    assert re.search(r"^  127\.0\.0\.1:5672 +3 +RabbitMQ \S+, cluster \S+ +-$", text, re.M), text
    assert re.search(r"^  worker_brokenimport +3 +0 +0$", text, re.M), text
    assert re.search(r"^  worker_recorder +0 +1 +2$", text, re.M), text
    assert re.search(r"^  taskqueue +0 +- +1$", text, re.M), text
    assert "\nproblems:\n  brokenimport is quarantined after exit 4" in text


def test_status_of_a_healthy_dispatcher_and_worker_pool_exits_0(
        broker, start_pool, records, status_dir):
    # Given the two services as separate supervisors, as the packages run them
    body = recorder_config(records)
    start_pool(body, command="workerpool")
    dispatcher = start_pool(body, command="dispatcher")
    wait_for(lambda: broker.counts("worker_recorder")[1] == 1, 15, "the recorder consuming")
    wait_for(lambda: broker.counts("taskqueue")[1] == 1, 15, "the dispatcher consuming")
    # (the status directory holds each supervisor's graveyard too)
    wait_for(lambda: len([n for n in os.listdir(status_dir) if n.endswith(".sock")]) == 2, 15,
             "two status sockets")
    # When status is asked
    out = status(dispatcher.config_path)
    # Then both answer, every queue has its consumer, and it exits 0
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"^taskqueue-dispatcher: pid \d+, up ", out.stdout, re.M)
    assert re.search(r"^taskqueue-workerpool: pid \d+, up ", out.stdout, re.M)
    assert out.stdout.endswith("\nproblems: none\n")
    assert out.stderr == ""


def test_status_without_a_running_supervisor_says_so_and_exits_3(broker, workdir, vhost):
    # Given a status directory with only the socket of a supervisor that is gone
    run_dir = os.path.join(workdir, "run")
    os.mkdir(run_dir)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(os.path.join(run_dir, "taskqueue-workerpool.sock"))
    stale.close()
    path = os.path.join(workdir, "config.ini")
    with open(path, "w") as f:
        f.write(config_text(vhost, "[DEFAULT]\nworkers: 0\n", status_dir=run_dir))
    broker.submit("recorder", {"id": "waits"})     # nobody routes it
    # When status is asked
    out = status(path)
    # Then it says nothing answers, still shows the queues, and exits 3
    assert out.returncode == 3, out.stdout + out.stderr
    assert f"{run_dir}/taskqueue-workerpool.sock: not running" in out.stdout
    assert re.search(r"^  taskqueue +1 +- +0$", out.stdout, re.M), out.stdout
    assert f"taskqueue: no supervisor answers in {run_dir}" in out.stderr


def test_status_with_the_broker_unreachable_shows_the_supervisor_and_exits_4(
        broker, start_pool, records, workdir, vhost, status_dir):
    pool = start_pool(recorder_config(records))
    wait_for(lambda: broker.counts("worker_recorder")[1] == 1, 15, "the recorder consuming")
    # Given a config that names a port where no broker listens
    path = os.path.join(workdir, "no-broker.ini")
    with open(path, "w") as f:
        f.write(config_text(vhost, recorder_config(records), port=1, status_dir=status_dir))
    out = status(path)
    assert out.returncode == 4, out.stdout + out.stderr
    assert re.search(rf"^taskqueue-run: pid {pool.pid}, up ", out.stdout, re.M)
    assert re.search(r"^  recorder +- +- +1 +1 +running", out.stdout, re.M), out.stdout
    assert re.search(r"^  worker_recorder +- +0 +-$", out.stdout, re.M), out.stdout
    assert "taskqueue: broker 127.0.0.1:1 " in out.stderr and "cannot connect" in out.stderr


@pytest.mark.timeout(60)
def test_status_timeout_bounds_the_wait_for_a_broker_that_stops_answering_once_connected(
        workdir, vhost, status_dir, amqp_port):
    # Given a broker that falls silent as soon as a connection is open (behind a proxy)
    proxy = TcpProxy(amqp_port)
    proxy.freeze_once_open = True
    try:
        path = os.path.join(workdir, "silent-broker.ini")
        with open(path, "w") as f:
            f.write(config_text(vhost, "[DEFAULT]\nworkers: 0\n", port=proxy.port,
                                status_dir=status_dir))
        # When status asks it with --timeout 2
        started = time.monotonic()
        out = status(path, "--timeout", "2")
        elapsed = time.monotonic() - started
    finally:
        proxy.close()
    # Then it gives up after 2 s, says why and exits 4, as for a broker it cannot reach
    assert out.returncode == 4, out.stdout + out.stderr
    assert re.search(r"^taskqueue: broker 127\.0\.0\.1:\d+ .*: asking the broker: no reply "
                     r"from 127\.0\.0\.1:\d+ vhost '\S+' in 2s$", out.stderr, re.M), out.stderr
    assert 2 <= elapsed < 6, elapsed


@pytest.fixture
def status_group():
    """The group the packages make (taskqueue), made for this test where it is missing."""
    try:
        yield grp.getgrnam(STATUS_GROUP).gr_gid
        return
    except KeyError:
        pass
    subprocess.run(["groupadd", "--system", STATUS_GROUP], check=True)
    try:
        yield grp.getgrnam(STATUS_GROUP).gr_gid
    finally:
        subprocess.run(["groupdel", STATUS_GROUP], check=True)


def test_status_socket_is_0660_left_to_its_owner_and_removed_when_the_supervisor_stops(
        broker, start_pool, records, status_dir, status_group):
    # Given a running pool: its socket is closed to others, in group taskqueue from the
    # moment it exists (a member's `taskqueue status` is never refused at startup)
    first = start_pool(recorder_config(records))
    path = os.path.join(status_dir, "taskqueue-run.sock")
    wait_for(lambda: os.path.exists(path), 15, "the status socket", interval=0.001)
    mode = os.stat(path)
    assert stat.S_ISSOCK(mode.st_mode) and stat.S_IMODE(mode.st_mode) == 0o660
    assert mode.st_gid == status_group
    # When a second supervisor of the same name starts: it runs, without a socket
    second = start_pool(recorder_config(records))
    second.wait_log(rf"WARNING: status socket {path}: another running supervisor answers on it; "
                    r"running without it")
    second.wait_log(r"recorder#0 pid=\d+ STARTING -> RUNNING")
    # and stopping it leaves the first one's socket alone
    assert second.stop() == 0
    assert status_json(first.config_path)[1]["supervisors"][0]["supervisor"]["pid"] == first.pid
    # When the first one stops, its socket goes with it
    assert first.stop() == 0
    assert not os.path.exists(path)


def test_supervisor_that_cannot_make_its_status_socket_warns_and_runs_on(
        broker, start_pool, records, workdir):
    not_a_dir = os.path.join(workdir, "file")
    open(not_a_dir, "w").close()
    pool = start_pool(recorder_config(records) + f"\n[supervisor]\nstatus_dir: {not_a_dir}/run\n",
                      own_status_dir=False)
    pool.wait_log(rf"WARNING: status socket {not_a_dir}/run/taskqueue-run.sock: .*; running "
                  r"without it \(`taskqueue status` will not see this supervisor")
    wait_for(lambda: broker.counts("worker_recorder")[1] == 1, 15, "the recorder consuming")
    broker.submit("recorder", {"id": "t1"})
    wait_for(lambda: records.ids() == ["t1"], 15, "the task done")
    assert pool.stop() == 0


def test_status_lists_a_worker_queue_of_a_type_nobody_runs_holding_tasks_and_exits_1(
        broker, start_pool, records, workdir):
    # Given a healthy pool, and a task waiting for a type no host runs a plugin of
    pool = start_pool(recorder_config(records))
    wait_for(lambda: broker.counts("worker_recorder")[1] == 1, 15, "the recorder consuming")
    wait_for(lambda: broker.counts("taskqueue")[1] == 1, 15, "the dispatcher consuming")
    broker.submit("nosuchtype", {"id": "waits"})
    wait_for(lambda: broker.counts("worker_nosuchtype")[0] == 1, 15, "the task routed")
    # When status is asked (as root, on the broker's host: rabbitmqctl can list the queues)
    out = status(pool.config_path)
    # Then that queue is listed, and it is a problem
    assert out.returncode == 1, out.stdout + out.stderr
    assert re.search(r"^  worker_nosuchtype +1 +0 +0$", out.stdout, re.M), out.stdout
    assert out.stdout.endswith("\nproblems:\n  queue worker_nosuchtype has no consumer "
                               "(1 message(s) waiting)\n"), out.stdout
    code, doc = status_json(pool.config_path)
    assert code == 1
    assert doc["queue_listing"] == {"source": "rabbitmqctl", "error": None}
    assert queues_of(doc)["worker_nosuchtype"]["ready"] == 1

    # When rabbitmqctl cannot be run (not on this PATH), Then status says so and judges the rest
    env = {**os.environ, "PATH": f"{os.path.dirname(TASKQUEUE)}:/usr/bin:/bin"}
    blind = subprocess.run([TASKQUEUE, "status", "--config", pool.config_path], env=env,
                           capture_output=True, text=True, timeout=60)
    assert blind.returncode == 0, blind.stdout + blind.stderr
    assert "worker_nosuchtype" not in blind.stdout
    assert ("other worker queues not listed: rabbitmqctl is not on PATH (as root on the "
            "broker's host, status lists them all)") in blind.stdout, blind.stdout
    assert blind.stdout.endswith("\nproblems: none\n")
    assert pool.stop() == 0
