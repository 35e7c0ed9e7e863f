"""Groups with `user:` run as that user: uid, gid, supplementary groups, HOME and USER.

Runs the specification's config file verbatim (plus an [amqp] section for the
test vhost). Creates the system users it names, and removes what it created.
"""
import os
import pwd

import pytest

from support import recorder_config, system_users, wait_for

SPEC_CONFIG = open(os.path.join(os.path.dirname(__file__), "..", "fixtures",
                               "specification-config.ini")).read()
EXTRA_GROUP = "tqtest-extra"
#: What `--user` names in these tests (the packages use `taskqueue`).
DAEMON_USER = "tqtest-daemon"


@pytest.fixture(scope="module")
def spec_users():
    with system_users(users=("bifh1", "bifh2", DAEMON_USER), groups=(EXTRA_GROUP,),
                      members=(("bifh1", EXTRA_GROUP),)):
        yield


def test_specification_config_runs_3_worker1_and_worker2_as_bifh1_and_bifh2(
        spec_users, broker, start_pool, records):
    pool = start_pool(SPEC_CONFIG, env={"TQTEST_RECORD_DIR": records.path})
    wait_for(lambda: broker.counts("worker_worker1")[1] == 3, 15, "3 worker1 consumers")
    wait_for(lambda: broker.counts("worker_worker2")[1] == 2, 15, "2 worker2 consumers")
    for n in range(30):
        broker.submit("worker1", {"id": f"one{n}", "sleep": 0.01})
        broker.submit("worker2", {"id": f"two{n}", "sleep": 0.01})
    done = wait_for(lambda: len(records.ids()) == 60 and records.all(), 30, "60 tasks done")
    worker1 = [r for r in done if r["routing_key"] == "worker_worker1"]
    worker2 = [r for r in done if r["routing_key"] == "worker_worker2"]
    assert len({r["pid"] for r in worker1}) == 3
    assert all(r["uid"] == 0 for r in worker1)
    # Both users' processes took a share, each as exactly that user.
    by_user = {}
    for record in worker2:
        by_user.setdefault(record["user"], []).append(record)
    assert set(by_user) == {"bifh1", "bifh2"}
    for user, recs in by_user.items():
        pw = pwd.getpwnam(user)
        expected_groups = sorted(set(os.getgrouplist(user, pw.pw_gid)))
        for r in recs:
            assert (r["uid"], r["gid"]) == (pw.pw_uid, pw.pw_gid)
            assert r["groups"] == expected_groups
            assert r["home"] == pw.pw_dir
    assert EXTRA_GROUP in by_user["bifh1"][0]["group_names"]
    assert 0 not in by_user["bifh2"][0]["groups"]  # root's groups are not kept
    pool.wait_log(r"worker2/bifh1#0 pid=\d+ STARTING -> RUNNING")
    assert pool.stop() == 0


def uid_of(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Uid:"))


def test_daemon_user_runs_supervisor_and_children_unprivileged_when_no_group_needs_root(
        spec_users, broker, start_pool, records):
    daemon = pwd.getpwnam(DAEMON_USER)
    pool = start_pool(recorder_config(records, processes=2), command="workerpool",
                      extra_args=["--user", DAEMON_USER])
    wait_for(lambda: broker.counts("worker_recorder")[1] == 2, 15, "2 consumers")
    assert uid_of(pool.pid) == daemon.pw_uid
    assert [uid_of(pid) for pid in pool.children()] == [daemon.pw_uid] * 2
    broker.publish_raw(b'{"id": "t"}', queue="worker_recorder")  # no dispatcher in a workerpool
    done = wait_for(records.all, 15, "the task done")
    assert (done[0]["uid"], done[0]["user"]) == (daemon.pw_uid, DAEMON_USER)
    pool.wait_log(f"running as user {DAEMON_USER}")
    assert pool.stop() == 0


def test_daemon_user_leaves_root_to_the_supervisor_only_when_a_group_names_another_user(
        spec_users, broker, start_pool, records):
    config = recorder_config(records) + f"\n[recorder2]\nworkers: 1\nuser: bifh1\nrecord_dir: {records.path}\n"
    pool = start_pool(config, command="workerpool", extra_args=["--user", DAEMON_USER])
    wait_for(lambda: broker.counts("worker_recorder")[1] == 1, 15, "the recorder consumer")
    wait_for(lambda: broker.counts("worker_recorder2")[1] == 1, 15, "the recorder2 consumer")
    assert uid_of(pool.pid) == 0
    expected = {pwd.getpwnam(DAEMON_USER).pw_uid, pwd.getpwnam("bifh1").pw_uid}
    assert {uid_of(pid) for pid in pool.children()} == expected
    assert pool.stop() == 0
