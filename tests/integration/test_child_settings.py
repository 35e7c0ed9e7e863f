"""A child of one group never holds another group's settings (issue 20, item 4).

A child that runs as another user than the supervisor execs a fresh
interpreter that receives only its own group's settings (taskqueue/
childexec.py). Read as root: every readable region of its memory
(/proc/<pid>/maps and /proc/<pid>/mem), searched for another group's secret.
"""
import json
import os
import pwd
import re
import signal
import uuid

import pytest

from support import alive, system_users, wait_for

USER = "bifh1"


@pytest.fixture(scope="module")
def other_user():
    with system_users(users=(USER,)):
        yield


def memory_holds(pid, needle):
    """True when `needle` (bytes) is in a readable region of the memory of `pid`."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            fields = line.split()
            if not fields[1].startswith("r") or line.rstrip().endswith("[vsyscall]"):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            tail = b""
            for offset in range(start, end, 1 << 20):
                try:
                    mem.seek(offset)
                    chunk = mem.read(min(1 << 20, end - offset))
                except (OSError, ValueError, OverflowError):   # [vvar], a guard page
                    break
                if needle in tail + chunk:
                    return True
                tail = chunk[-len(needle):]
    return False


def uid_of(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Uid:"))


def children_by_uid(pool):
    return {uid_of(pid): pid for pid in pool.children()}


@pytest.fixture
def secrets():
    return {"root": f"rootgroup-{uuid.uuid4().hex}", "own": f"owngroup-{uuid.uuid4().hex}"}


@pytest.fixture
def pool(other_user, broker, start_pool, records, secrets):
    config = (f"[DEFAULT]\nworkers: 0\nrecord_dir: {records.path}\n\n"
              f"[recorder]\nworkers: 1\napi_secret: {secrets['root']}\n\n"
              f"[recorder2]\nworkers: 1\nuser: {USER}\nown_secret: {secrets['own']}\n")
    pool = start_pool(config, command="workerpool")
    wait_for(lambda: broker.counts("worker_recorder")[1] == 1, 15, "the root group consuming")
    wait_for(lambda: broker.counts("worker_recorder2")[1] == 1, 15, f"the {USER} group consuming")
    return pool


def test_a_child_running_as_another_user_holds_no_other_group_s_option(pool, secrets):
    children = children_by_uid(pool)
    other = children[next(uid for uid in children if uid != 0)]
    # The search can find what is there: the supervisor and the root child hold both
    # (they could read the config anyway); the other user's child holds its own.
    assert memory_holds(pool.pid, secrets["root"].encode())
    assert memory_holds(children[0], secrets["root"].encode())
    assert memory_holds(other, secrets["own"].encode())
    # Seen on fe425d5: the forked child held the whole config.
    assert not memory_holds(other, secrets["root"].encode())
    assert pool.stop() == 0


def test_a_child_running_as_another_user_works_and_restarts_after_sigkill(
        pool, broker, records):
    first = children_by_uid(pool)
    other = first[next(uid for uid in first if uid != 0)]
    broker.publish_raw(json.dumps({"id": "a", "sleep": 0.1}).encode(), queue="worker_recorder2")
    (done,) = wait_for(lambda: records.all(), 15, "the first task done")
    assert (done["pid"], done["user"]) == (other, USER)
    os.kill(other, signal.SIGKILL)
    pool.wait_log(rf"recorder2#0 pid={other} killed by SIGKILL")
    ready = pool.wait_log(r"recorder2#0 pid=(\d+) STARTING -> RUNNING", count=2)
    replacement = int(ready[-1])
    assert replacement != other and uid_of(replacement) != 0
    broker.publish_raw(json.dumps({"id": "b"}).encode(), queue="worker_recorder2")
    wait_for(lambda: "b" in records.ids(), 15, "the second task done")
    assert [r["pid"] for r in records.all() if r["id"] == "b"] == [replacement]
    assert pool.stop() == 0


def test_a_child_running_as_another_user_dies_with_its_supervisor(pool):
    # PR_SET_PDEATHSIG is set after the privilege drop and survives the exec.
    children = pool.children()
    pool.process.kill()
    pool.process.wait(10)
    wait_for(lambda: not any(alive(pid) for pid in children), 10, "every child gone")


def test_a_child_running_as_another_user_keeps_only_its_own_fds(pool):
    children = children_by_uid(pool)
    other = children[next(uid for uid in children if uid != 0)]
    links = [os.readlink(f"/proc/{other}/fd/{fd}") for fd in os.listdir(f"/proc/{other}/fd")]
    pipes = [link for link in links if link.startswith("pipe:")]
    stdio = {os.readlink(f"/proc/{other}/fd/{fd}") for fd in (0, 1, 2)}
    # One end of a pipe: its report pipe, and what stdin/stdout/stderr are (both ends
    # of one: a wake-up pipe of its own event loop); no other child's pipe, no
    # graveyard lock, no memfd left open.
    assert len([p for p in pipes if p not in stdio and pipes.count(p) == 1]) == 1, links
    assert not [link for link in links if "memfd:" in link or "taskqueue-graves" in link], links
    assert pool.stop() == 0


def test_a_dispatcher_and_workers_of_other_users_route_and_handle_tasks(
        other_user, broker, start_pool, records):
    # `run --user D` with a group of another user: the supervisor keeps root, the
    # dispatcher (as D) and the workers (as bifh1) both start fresh interpreters.
    daemon = "tqtest-daemon"
    with system_users(users=(daemon,)):
        config = (f"[DEFAULT]\nworkers: 0\n\n[recorder]\nworkers: 1\nuser: {USER}\n"
                  f"record_dir: {records.path}\n")
        pool = start_pool(config, command="run", extra_args=["--user", daemon])
        wait_for(lambda: broker.counts("taskqueue")[1] == 1, 15, "the dispatcher consuming")
        wait_for(lambda: broker.counts("worker_recorder")[1] == 1, 15, "the worker consuming")
        assert uid_of(pool.pid) == 0
        broker.submit("recorder", {"id": "routed"})   # through the dispatcher
        (done,) = wait_for(records.all, 15, "the routed task done")
        assert done["user"] == USER
        uids = {uid_of(pid) for pid in pool.children()}
        assert uids == {pwd.getpwnam(daemon).pw_uid, pwd.getpwnam(USER).pw_uid}
        assert pool.stop() == 0


def test_a_child_asked_to_stop_while_it_execs_stops_at_once(other_user, start_pool, records):
    # The stop signal stays blocked, pending, from the fork to the new interpreter's handler.
    config = (f"[DEFAULT]\nworkers: 0\nstop_timeout: 20\n\n[recorder2]\nworkers: 1\n"
              f"user: {USER}\nrecord_dir: {records.path}\n")
    pool = start_pool(config, command="workerpool")
    pool.wait_log(r"recorder2#0 pid=- STOPPED -> STARTING", timeout=15)
    pool.process.send_signal(signal.SIGTERM)
    assert pool.stop(timeout=15) == 0
    log = pool.log()
    assert re.search(r"recorder2#0 pid=\d+ STARTING -> STOPPING", log), log
    assert re.search(r"recorder2#0 pid=\d+ exit 0 \(stopped\)", log), log
