"""runtime/commandworker.py: the environment, the exit status's meaning, what is kept of
stdout and stderr, and one run of a real /bin/sh program (no broker)."""
import os
import signal
import time
from types import SimpleNamespace

import pika
import pytest

from taskqueue.host.config import WorkerGroup
from taskqueue.runtime.commandworker import (EX_TEMPFAIL, STDERR_TAIL, STDOUT_CAP, CommandWorker,
                                             Run, build_env, run, tail, verdict)

from support import alive, wait_for


def props(**given):
    return pika.BasicProperties(**given)


# -- environment ------------------------------------------------------------------

def test_the_environment_is_minimal_and_says_which_task_this_is():
    env = build_env(props(message_id="m-1", reply_to="amq.rabbitmq.reply-to.x",
                          content_type="application/json",
                          headers={"x-taskqueue-retries": 2}), b"{}", "resize", "/home/u")
    assert env == {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                   "HOME": "/home/u", "TASKQUEUE_TASK_ID": "m-1",
                   "TASKQUEUE_WORKER_TYPE": "resize", "TASKQUEUE_ATTEMPT": "3",
                   "TASKQUEUE_REPLY_TO": "amq.rabbitmq.reply-to.x",
                   "TASKQUEUE_CONTENT_TYPE": "application/json"}


def test_a_first_attempt_without_reply_to_or_id_gets_attempt_1_empty_values_and_a_digest():
    env = build_env(props(), b"body", "resize", "/root")
    assert env["TASKQUEUE_ATTEMPT"] == "1"
    assert env["TASKQUEUE_REPLY_TO"] == env["TASKQUEUE_CONTENT_TYPE"] == ""
    assert env["TASKQUEUE_TASK_ID"].startswith("sha1-")


def test_a_nul_in_a_publishers_header_never_reaches_execve():
    env = build_env(props(message_id="a\0b", reply_to="q\0x", content_type="t\0"), b"",
                    "resize", "/root")
    assert all("\0" not in value for value in env.values())
    assert env["TASKQUEUE_REPLY_TO"] == "qx"


def test_the_workers_own_environment_is_not_passed_on(monkeypatch):
    monkeypatch.setenv("TQTEST_SECRET", "x")
    assert "TQTEST_SECRET" not in build_env(props(), b"", "t", "/")


# -- exit status ---------------------------------------------------------------------

@pytest.mark.parametrize("code, stderr, expected", [
    (0, b"noise", ("ack",)),
    (EX_TEMPFAIL, b"later", ("retry",)),
    (1, b"disk full\n", ("dead", "command exited 1: disk full")),
    (2, b"", ("dead", "command exited 2")),
    (-9, b"", ("dead", "command killed by signal 9 (SIGKILL)")),
    (-11, b"oops", ("dead", "command killed by signal 11 (SIGSEGV): oops")),
])
def test_the_exit_status_says_ack_retry_or_dead_letter(code, stderr, expected):
    assert verdict(code, stderr) == expected


def test_stdout_over_its_cap_is_dead_lettered_whatever_the_status():
    assert verdict(0, b"", over_cap=True) == (
        "dead", f"command wrote more than {STDOUT_CAP} bytes to stdout (its cap); killed")


# -- what is kept ------------------------------------------------------------------------

def test_stderr_keeps_its_last_bytes_marked_as_cut():
    result = Run()
    for _ in range(100):
        result.keep("stderr", b"x" * 100)
    result.keep("stderr", b"the end\n")
    said = tail(bytes(result.stderr))
    assert said.startswith("...") and said.endswith("the end")
    assert len(said) == 3 + STDERR_TAIL - 1     # the newline stripped
    assert tail(b"short\n") == "short"


def test_stderr_bad_utf8_is_replaced_not_raised():
    assert tail(b"\xff\xfebad") == "\ufffd\ufffdbad"


def test_stdout_is_kept_up_to_its_cap_and_marked_over_it():
    result = Run()
    result.keep("stdout", b"a" * STDOUT_CAP)
    assert not result.over_cap and len(result.stdout) == STDOUT_CAP
    result.keep("stdout", b"b")
    assert result.over_cap and len(result.stdout) == STDOUT_CAP


# -- one run of a real program ------------------------------------------------------------

@pytest.fixture
def script(tmp_path):
    def script(text):
        path = tmp_path / f"s{len(list(tmp_path.iterdir()))}.sh"
        path.write_text("#!/bin/sh\n" + text)
        path.chmod(0o755)
        return str(path)
    return script


@pytest.mark.timeout(20)
def test_the_body_goes_to_stdin_and_stdout_and_the_status_come_back(script):
    body = bytes(range(256)) * 1024      # bigger than a pipe: written while read
    result = run([script("cat; echo err >&2; exit 3")], body, {"PATH": "/bin"})
    assert bytes(result.stdout) == body
    assert (result.returncode, bytes(result.stderr), result.timed_out) == (3, b"err\n", False)


@pytest.mark.timeout(20)
def test_a_program_that_ignores_its_stdin_is_no_error(script):
    result = run([script("echo done")], b"x" * 10**6, {})
    assert (result.returncode, bytes(result.stdout)) == (0, b"done\n")


@pytest.mark.timeout(20)
def test_endless_stdout_is_cut_at_its_cap_and_the_program_killed(script):
    started = time.monotonic()
    result = run([script("exec /usr/bin/yes")], b"", {})
    assert result.over_cap and len(result.stdout) == STDOUT_CAP
    assert result.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 10


@pytest.mark.timeout(20)
def test_a_grandchild_left_running_is_killed_when_the_program_exits(script, tmp_path):
    pidfile = tmp_path / "grandchild"
    result = run([script(f"sleep 60 & echo $! > {pidfile}; exit 0")], b"", {"PATH": "/bin"})
    assert result.returncode == 0
    grandchild = int(pidfile.read_text())
    wait_for(lambda: not alive(grandchild), 5, "the grandchild killed")


@pytest.mark.timeout(20)
def test_a_program_past_its_timeout_is_killed_with_its_group(script, tmp_path):
    pidfile = tmp_path / "grandchild"
    started = time.monotonic()
    result = run([script(f"sleep 60 & echo $! > {pidfile}; sleep 60")], b"", {"PATH": "/bin"},
                 timeout=0.5)
    assert result.timed_out and result.returncode == -signal.SIGKILL
    assert 0.5 <= time.monotonic() - started < 5
    wait_for(lambda: not alive(int(pidfile.read_text())), 5, "the grandchild killed")


@pytest.mark.timeout(20)
def test_the_program_runs_in_a_process_group_of_its_own(script):
    result = run([script("ps -o pgid= -p $$; echo $$")], b"", {"PATH": "/bin:/usr/bin"})
    pgid, pid = bytes(result.stdout).split()
    assert pgid == pid and int(pgid) != os.getpgrp()


# -- handle_task: the status settles the task through the channel ------------------------

class Channel:
    """What handle_task called, in order."""

    def __init__(self):
        self.calls = []

    def reply(self, body, content_type=None):
        self.calls.append(("reply", body))

    def basic_ack(self, delivery_tag=0, multiple=False):
        self.calls.append(("ack",))

    def retry(self, delay=None):
        self.calls.append(("retry",))

    def dead_letter(self, reason):
        self.calls.append(("dead", reason))


@pytest.mark.timeout(20)
@pytest.mark.parametrize("text, reply_to, calls", [
    ("cat", "amq.gen-x", [("reply", b"in"), ("ack",)]),
    ("cat", None, [("ack",)]),
    ("exit 75", "amq.gen-x", [("retry",)]),
    ("echo 'no such row' >&2; exit 1", "amq.gen-x", [("dead", "command exited 1: no such row")]),
    ("kill -TERM $$", None, [("dead", "command killed by signal 15 (SIGTERM)")]),
])
def test_handle_task_settles_as_the_status_says(script, text, reply_to, calls):
    group = WorkerGroup("resize", None, 1, command=(script(text),))
    worker = CommandWorker.factory(group)
    worker.setup()
    channel = Channel()
    worker.handle_task(channel, SimpleNamespace(delivery_tag=1), props(reply_to=reply_to), b"in")
    assert channel.calls == calls

