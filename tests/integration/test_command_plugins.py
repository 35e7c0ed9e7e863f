"""A worker type that is a program (`command:`): a real pool runs a /bin/sh script the
test writes, once per task; its exit status settles the task as a Python plugin's
outcome would (reply and ack, retry, dead letter, the task_timeout kill)."""
import json
import os
import pwd
import re

import pytest

from support import alive, system_users, wait_for
from taskqueue.client import TaskFailed
from taskqueue.host.config import AmqpSettings

#: The user of the `user:` group (created and removed by the test).
COMMAND_USER = "tqtest-cmd"


@pytest.fixture
def script(workdir):
    """script(text): a /bin/sh program in the test's directory, mode 0755; its path."""
    def script(text):
        path = os.path.join(workdir, f"task-{len(os.listdir(workdir))}.sh")
        with open(path, "w") as f:
            f.write("#!/bin/sh\n" + text)
        os.chmod(path, 0o755)
        return path
    return script


def serve(broker, start_pool, path, extra="", **pool):
    """A pool whose one type, `cmd`, is the program `path`; once it consumes."""
    started = start_pool(f"[DEFAULT]\nworkers: 0\n\n[cmd]\nworkers: 1\ncommand: {path}\n{extra}",
                         **pool)
    wait_for(lambda: broker.counts("worker_cmd")[1] == 1, 20,
             lambda: f"cmd consuming\n{started.log()[-2000:]}")
    return started


@pytest.mark.timeout(60)
def test_the_program_gets_the_body_on_stdin_and_its_stdout_is_the_reply(
        broker, start_pool, client, script):
    pool = serve(broker, start_pool, script(
        'printf "%s %s %s|" "$TASKQUEUE_WORKER_TYPE" "$TASKQUEUE_ATTEMPT" "$TASKQUEUE_CONTENT_TYPE"\n'
        'case "$TASKQUEUE_REPLY_TO" in amq.rabbitmq.reply-to.*) printf "direct|" ;; esac\n'
        'printf "%s|%s|" "$PATH" "$LANG"\ncat\n'))
    for n in range(5):
        reply = client.call("cmd", {"n": n}, timeout=20).decode()
        head, body = reply.rsplit("|", 1)
        assert head == "cmd 1 application/json|direct|/usr/sbin:/usr/bin:/sbin:/bin|C.UTF-8"
        assert json.loads(body) == {"n": n}
    # No reply_to: acked all the same, nothing left anywhere.
    broker.submit("cmd", {"n": "quiet"})
    wait_for(lambda: broker.counts("taskqueue")[0] == broker.counts("worker_cmd")[0] == 0,
             10, "the task taken")
    pool.wait_log(r"cmd#0 pid=\d+ STARTING -> RUNNING")
    assert broker.counts("taskqueue_dead")[0] == 0
    assert pool.stop() == 0


@pytest.mark.timeout(60)
def test_exit_75_retries_with_the_groups_policy_then_exit_0_acks(
        broker, start_pool, client, script):
    pool = serve(broker, start_pool, script(
        '[ "$TASKQUEUE_ATTEMPT" = 1 ] && exit 75\necho "attempt $TASKQUEUE_ATTEMPT"\n'),
        extra="max_retries: 2\nretry_delay: 1\n")
    assert client.call("cmd", "x", timeout=30) == b"attempt 2\n"
    pool.wait_log(r"task \S+: retry 1 in 1\.\ds")
    assert broker.counts("taskqueue_dead")[0] == 0
    assert pool.stop() == 0


@pytest.mark.timeout(60)
def test_exit_75_past_max_retries_is_dead_lettered_as_spent_retries_are(
        broker, start_pool, script):
    pool = serve(broker, start_pool, script("exit 75\n"), extra="max_retries: 1\nretry_delay: 1\n")
    broker.submit("cmd", "x", message_id="m-spent")
    [(props, _)] = wait_for(lambda: broker.drain("taskqueue_dead"), 30, "the dead letter")
    assert props.message_id == "m-spent"
    assert props.headers["x-taskqueue-retries"] == 1
    assert "retries" in props.headers["x-taskqueue-reason"]
    assert pool.stop() == 0


@pytest.mark.timeout(60)
def test_a_failing_program_is_dead_lettered_with_its_status_and_stderrs_tail(
        broker, start_pool, client, script):
    pool = serve(broker, start_pool, script(
        "i=0; while [ $i -lt 300 ]; do echo \"noise line $i\" >&2; i=$((i+1)); done\n"
        "echo 'cannot open /data/x: no such file' >&2\nexit 3\n"))
    with pytest.raises(TaskFailed) as failed:
        client.call("cmd", "x", timeout=20)
    [(props, body)] = wait_for(lambda: broker.drain("taskqueue_dead"), 10, "the dead letter")
    reason = props.headers["x-taskqueue-reason"]
    assert reason.startswith("command exited 3: ...")
    assert reason.endswith("noise line 299\ncannot open /data/x: no such file")
    assert len(reason) < 2200         # the tail only (~2 KiB)
    assert failed.value.reason.startswith("command exited 3: ...")   # cut shorter there
    assert props.headers["x-taskqueue-worker-type"] == "cmd"
    assert json.loads(body) == "x"
    pool.wait_log(r"given up by the plugin after [\d.]+s: command exited 3")
    assert pool.stop() == 0


@pytest.mark.timeout(120)
def test_a_program_past_task_timeout_is_killed_with_its_grandchild_and_goes_the_timeout_way(
        broker, start_pool, script, workdir):
    # Given a program that starts a grandchild and both sleep past task_timeout 2
    broker.settings = AmqpSettings(delivery_limit=2)
    pids = os.path.join(workdir, "pids")
    pool = serve(broker, start_pool, script(
        f"sleep 300 &\necho \"$$ $!\" >> {pids}\nsleep 300\n"),
        extra="task_timeout: 2\n", amqp_extra="delivery_limit: 2\n")
    broker.submit("cmd", "slow", message_id="m-slow")
    # Then, as for a Python task: the worker killed at task_timeout, twice, then the task
    # dead-lettered by the delivery limit
    [(props, _)] = wait_for(lambda: broker.drain("taskqueue_dead"), 60, "the dead letter")
    assert re.fullmatch(r"delivery limit 2 reached: 2 processes died handling it; last: "
                        r"cmd#0 pid \d+: killed by SIGKILL \(task_timeout\) during task m-slow",
                        props.headers["x-taskqueue-reason"]), props.headers
    pool.wait_log(r"cmd#0 pid=\d+ killed by SIGKILL \(task_timeout\)", count=2)
    pool.wait_log(r"command still running at task_timeout 2s; its process group killed")
    # and nothing the program started outlived it
    with open(pids) as f:
        started = [int(pid) for line in f for pid in line.split()]
    assert len(started) == 4
    wait_for(lambda: not any(alive(pid) for pid in started), 10,
             lambda: f"the programs and grandchildren gone: {[p for p in started if alive(p)]}")
    assert pool.stop() == 0


@pytest.mark.timeout(60)
def test_a_grandchild_left_running_when_the_program_exits_is_killed_before_the_ack(
        broker, start_pool, client, script, workdir):
    pid_file = os.path.join(workdir, "grandchild")
    pool = serve(broker, start_pool, script(
        f"sleep 300 &\necho $! > {pid_file}\necho started\n"))
    assert client.call("cmd", "x", timeout=20) == b"started\n"
    with open(pid_file) as f:
        grandchild = int(f.read())
    wait_for(lambda: not alive(grandchild), 5, "the grandchild gone")
    assert pool.stop() == 0


@pytest.mark.timeout(60)
def test_a_program_flooding_stdout_is_killed_at_its_cap_and_dead_lettered(
        broker, start_pool, client, script):
    pool = serve(broker, start_pool, script("exec /usr/bin/yes 'more than anyone reads'\n"))
    with pytest.raises(TaskFailed) as failed:
        client.call("cmd", "x", timeout=20)
    assert failed.value.reason == ("command wrote more than 1048576 bytes to stdout (its cap); "
                                   "killed")
    # The worker lives on: the next task is served by the same process.
    assert len(pool.children()) == 2       # the dispatcher and cmd#0
    assert pool.stop() == 0


@pytest.fixture(scope="module")
def command_user():
    with system_users(users=(COMMAND_USER,)):
        yield pwd.getpwnam(COMMAND_USER)


@pytest.mark.timeout(60)
def test_a_user_group_runs_the_program_as_that_user(
        command_user, broker, start_pool, client, script):
    pool = serve(broker, start_pool, script('id -u\necho "$HOME"\n'),
                 extra=f"user: {COMMAND_USER}\n")
    assert client.call("cmd", "x", timeout=20).decode().split() == [
        str(command_user.pw_uid), command_user.pw_dir]
    assert pool.stop() == 0
