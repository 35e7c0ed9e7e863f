"""The command line: check-config, submit (one task, or a file of them), and refusing a bad config."""
import json
import os
import pty
import re
import signal
import subprocess
import sys

import pytest

from nodes import free_port
from support import TASKQUEUE, config_text, nacking_vhost, recorder_config, wait_for


def run(*args, **kwargs):
    return subprocess.run([TASKQUEUE, *args], capture_output=True, text=True, timeout=60, **kwargs)


def test_check_config_lists_plugins_and_the_processes_it_would_start(workdir, vhost):
    path = f"{workdir}/config.ini"
    with open(path, "w") as f:
        f.write(config_text(vhost, "[DEFAULT]\nworkers: 0\n\n[recorder]\nworkers: 3\n"
                                   "\n[recorder2]\nworkers: 1\nmax_retries: 3\n"
                                   "reply_queues: results\nrate_limit: 5/s\n"
                                   "rate_limit_per_host: 2/m\n"))
    out = run("check-config", "--config", path)
    assert out.returncode == 0, out.stderr
    assert "recorder: tqtest.recorder:Recorder.factory" in out.stdout
    assert "workerext: extpackage.workerext:Worker.factory" in out.stdout
    assert re.search(r"^broker: 127\.0\.0\.1:\d+ vhost .* \(connect timeout 5s\)$", out.stdout,
                     re.MULTILINE), out.stdout
    assert ("messages: bodies up to 16 MiB (max_body_size); headers up to 32 levels deep, "
            "10000 fields, 65536 bytes; priority at most 9\n") in out.stdout
    lines = [line.split() for line in out.stdout.splitlines()]
    assert ["recorder", "-", "3", "-", "worker_recorder", "-", "reply", "queues", "-"] in lines
    assert ["dispatcher", "-", "1", "-", "taskqueue", "-", "-", "-"] in lines
    assert "schedules:" not in out.stdout    # no table when there are none
    assert ["recorder2", "-", "1", "-", "worker_recorder2", "3", "(1s", "x2,", "at", "most",
            "3600s)", "reply", "queues,", "results", "5/s,", "2/m", "per", "host"] in lines


def write_schedule_package(site):
    """A distribution in `site` that ships schedules (entry-point group taskqueue.schedules),
    one of them broken and one naming an object its module lacks."""
    info = os.path.join(site, "tq_sched_pkg-1.0.dist-info")
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\nName: tq-sched-pkg\nVersion: 1.0\n")
    with open(os.path.join(info, "entry_points.txt"), "w") as f:
        f.write("[taskqueue.schedules]\npkg.nightly = tq_sched_pkg:NIGHTLY\n"
                "pkg.hourly = tq_sched_pkg:HOURLY\npkg.broken = tq_sched_pkg:BROKEN\n"
                "pkg.gone = tq_sched_pkg:MISSING\n")
    with open(os.path.join(site, "tq_sched_pkg.py"), "w") as f:
        f.write('NIGHTLY = {"when": "30 2 * * *", "type": "recorder", "timezone": "Europe/Berlin"}\n'
                'HOURLY = "@hourly recorder"\nBROKEN = "every 0s recorder"\n')


def test_check_config_shows_config_and_package_schedules_with_their_next_firing(workdir, vhost):
    # Given a package shipping schedules, and a config that adds one, turns one off and
    # sets the priority of another
    site = os.path.join(workdir, "site")
    write_schedule_package(site)
    path = f"{workdir}/config.ini"
    with open(path, "w") as f:
        f.write(config_text(vhost, '[schedules]\nmine: every 30s recorder2 {"a": 1}\n'
                                   "pkg.hourly: off\npkg.nightly.priority: 5\n"))
    # When check-config runs with the package installed
    out = run("check-config", "--config", path,
              env={**os.environ, "PYTHONPATH": site + os.pathsep + os.environ.get("PYTHONPATH", "")})
    # Then the table shows what would fire, and the broken package schedules are named
    assert out.returncode == 0, out.stderr
    processes = out.stdout.split("processes:\n", 1)[1].split("schedules:\n", 1)[0]
    assert ["scheduler", "-", "1", "-", "-", "-", "-", "-"] in [
        line.split() for line in processes.splitlines()]    # the pool's scheduler child
    table = out.stdout.split("schedules:\n", 1)[1].splitlines()
    assert table[0].split() == ["name", "when", "type", "source", "settings", "next", "(local)",
                                "next", "(UTC)"]
    assert re.fullmatch(r"\s+mine\s+every 30s\s+recorder2\s+config\s+-\s+"
                        r"\d{4}-\d\d-\d\d \d\d:\d\d:[03]0 UTC\s+\d{4}-\d\d-\d\dT\d\d:\d\d:[03]0Z",
                        table[1]), table
    assert re.fullmatch(r"\s+pkg\.nightly\s+30 2 \* \* \* \(Europe/Berlin\)\s+recorder\s+"
                        r"package tq-sched-pkg 1\.0\s+priority 5\s+"
                        r"\d{4}-\d\d-\d\d \d\d:30:00 CES?T\s+\d{4}-\d\d-\d\dT0[01]:30:00Z",
                        table[2]), table
    assert len(table) == 3     # pkg.hourly is off; pkg.broken and pkg.gone are left out
    warnings = [line for line in out.stdout.splitlines() if line.startswith("warning: ")]
    assert any("schedule 'pkg.broken' of package tq-sched-pkg 1.0 (entry point "
               "taskqueue.schedules pkg.broken = tq_sched_pkg:BROKEN) left out: every '0s'" in line
               for line in warnings), warnings
    assert any("'pkg.gone'" in line and "AttributeError" in line for line in warnings), warnings


def test_submit_imports_no_package_schedule(workdir, vhost, broker):
    # A module a package's schedule names runs only where schedules are fired or shown
    # (the pools, check-config, `taskqueue schedules`), not in every client command.
    site = os.path.join(workdir, "site")
    write_schedule_package(site)
    with open(os.path.join(site, "tq_sched_pkg.py"), "a") as f:
        f.write("import os\nopen(os.environ['IMPORTED_AT'], 'w').close()\n")
    path = f"{workdir}/config.ini"
    with open(path, "w") as f:
        f.write(config_text(vhost, "[schedules]\npkg.nightly.priority: 5\n"))
    marker = os.path.join(workdir, "imported")
    env = {**os.environ, "IMPORTED_AT": marker,
           "PYTHONPATH": site + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = run("submit", "--config", path, "recorder", "1", env=env)
    assert out.returncode == 0, out.stderr
    assert not os.path.exists(marker) and "schedule" not in out.stderr
    assert run("check-config", "--config", path, env=env).returncode == 0
    assert os.path.exists(marker)


def test_bad_config_refuses_to_start_naming_file_section_option_and_value(workdir):
    path = f"{workdir}/config.ini"
    with open(path, "w") as f:
        f.write("[recorder]\nworkers: -2\n")
    for command in ("run", "workerpool", "dispatcher", "check-config"):
        out = run(command, "--config", path)
        assert out.returncode == 2
        assert path in out.stderr and "[recorder]" in out.stderr and "workers" in out.stderr
        assert "-2" in out.stderr


def test_missing_config_file_is_reported_by_name(workdir):
    out = run("run", "--config", f"{workdir}/nope.ini")
    assert out.returncode == 2
    assert f"{workdir}/nope.ini" in out.stderr and "not found" in out.stderr


def test_config_path_comes_from_taskqueue_config_when_no_option(workdir):
    out = run("check-config", env={"TASKQUEUE_CONFIG": f"{workdir}/env.ini", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 2
    assert f"{workdir}/env.ini" in out.stderr


def test_submit_publishes_the_task_one_hop_and_prints_its_message_id(broker, workdir, vhost):
    path = f"{workdir}/config.ini"
    with open(path, "w") as f:
        f.write(config_text(vhost, "[DEFAULT]\nworkers: 0\n"))
    out = run("submit", "--config", path, "recorder", '{"a": [1, 2]}')
    assert out.returncode == 0, out.stderr
    message_id = out.stdout.strip()
    from_stdin = run("submit", "--config", path, "recorder", "-", input='"text"')
    assert from_stdin.returncode == 0, from_stdin.stderr
    # One hop, with no worker_recorder yet: through the alternate exchange into taskqueue
    messages = wait_for(lambda: broker.drain("taskqueue"), 5, "the submitted tasks")
    assert [p.message_id for p, _ in messages][0] == message_id
    assert [body for _, body in messages] == [b'{"a":[1,2]}', b'"text"']
    assert all(p.headers["worker_type"] == "recorder" for p, _ in messages)
    bad = run("submit", "--config", path, "recorder", "{not json")
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr
    bad_type = run("submit", "--config", path, "no spaces", "1")
    assert bad_type.returncode == 2 and "'no spaces' is not 1-200 characters" in bad_type.stderr


def test_dispatcher_and_workerpool_run_as_separate_components_with_pidfiles(
        broker, start_pool, workdir, records):
    body = f"[DEFAULT]\nworkers: 0\n\n[recorder]\nworkers: 2\nrecord_dir: {records.path}\n"
    pidfile = f"{workdir}/workerpool.pid"
    workers = start_pool(body, command="workerpool", extra_args=["--pidfile", pidfile])
    dispatcher = start_pool(body, command="dispatcher")
    wait_for(lambda: broker.counts("worker_recorder")[1] == 2, 15, "2 worker consumers")
    wait_for(lambda: broker.counts("taskqueue")[1] == 1, 15, "the dispatcher consuming")
    assert open(pidfile).read().strip() == str(workers.pid)
    assert len(workers.children()) == 2 and len(dispatcher.children()) == 1
    for n in range(10):
        broker.submit("recorder", {"id": f"t{n}"})
    wait_for(lambda: len(records.ids()) == 10, 20, "10 tasks done")
    assert workers.stop() == 0 and dispatcher.stop() == 0
    assert not os.path.exists(pidfile)


def test_submit_wait_prints_the_workers_reply_and_fails_on_timeout(broker, start_pool, workdir):
    pool = start_pool("[DEFAULT]\nworkers: 0\n\n[echo]\nworkers: 1\n")
    wait_for(lambda: broker.counts("worker_echo")[1] == 1, 15, "the echo consumer")
    out = run("submit", "--config", pool.config_path, "--wait", "echo", '{"hello": "world"}')
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"hello": "world"}
    # recorder has no process here: nobody replies.
    late = run("submit", "--config", pool.config_path, "--wait", "--timeout", "1", "recorder", "1")
    assert late.returncode == 1
    assert "no reply" in late.stderr
    assert pool.stop() == 0


def test_submit_does_not_care_about_the_users_the_worker_groups_run_as(broker, workdir, vhost):
    path = f"{workdir}/config.ini"
    with open(path, "w") as f:
        f.write(config_text(vhost, "[DEFAULT]\nworkers: 0\n\n[recorder]\nworkers: 1\n"
                                   "user: tq-no-such-user\n"))
    assert run("submit", "--config", path, "recorder", "1").returncode == 0
    refused = run("workerpool", "--config", path)
    assert refused.returncode == 2 and "tq-no-such-user" in refused.stderr


def write_tasks(path, lines):
    with open(path, "w") as f:
        f.write("".join(f"{line}\n" for line in lines))
    return path


@pytest.mark.timeout(180)
def test_submit_file_of_500_tasks_gets_every_one_completed(broker, start_pool, records, workdir):
    pool = start_pool(recorder_config(records, processes=2))
    wait_for(lambda: broker.counts("worker_recorder")[1] == 2, 15, "2 recorder consumers")
    tasks = [json.dumps({"id": f"t{n}"}) for n in range(500)]
    path = write_tasks(f"{workdir}/tasks.jsonl", tasks[:250] + ["", "  "] + tasks[250:])
    out = run("submit", "--config", pool.config_path, "--file", path, "recorder")
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(r"submitted 500 of 500 tasks \(recorder\) to taskqueue\.direct in [\d.]+ s "
                        r"\([\d,]+/s\)\n", out.stderr)
    wait_for(lambda: len(records.ids()) == 500, 90, lambda: f"500 tasks done ({len(records.ids())})")
    assert sorted(records.ids()) == sorted(f"t{n}" for n in range(500))
    assert pool.stop() == 0


def test_submit_file_with_bad_lines_submits_nothing_and_names_file_and_line(broker, workdir, vhost):
    config = f"{workdir}/config.ini"
    with open(config, "w") as f:
        f.write(config_text(vhost, "[DEFAULT]\nworkers: 0\n"))
    path = write_tasks(f"{workdir}/tasks.jsonl", ['{"id": 1}', '"two"', "", "{oops", "3", "NaN"])
    out = run("submit", "--config", config, "--file", path, "recorder")
    assert out.returncode == 2
    assert f"{path}:4: not valid JSON (Expecting property name" in out.stderr
    assert f"{path}:6: not valid JSON (NaN is not JSON)" in out.stderr
    assert "nothing was submitted (2 bad lines of 5 tasks)" in out.stderr
    assert broker.counts("taskqueue") == (0, 0)
    missing = run("submit", "--config", config, "--file", f"{workdir}/nope.jsonl", "recorder")
    assert missing.returncode == 2 and f"cannot read {workdir}/nope.jsonl" in missing.stderr
    both = run("submit", "--config", config, "--file", path, "recorder", "1")
    assert both.returncode == 2 and "give no WORKITEM" in both.stderr


def test_submit_file_from_stdin_sends_the_tasks_a_single_submit_sends(broker, workdir, vhost):
    config = f"{workdir}/config.ini"
    with open(config, "w") as f:
        f.write(config_text(vhost, "[DEFAULT]\nworkers: 0\n"))
    out = run("submit", "--config", config, "--file", "-", "recorder", input='1\n\n{"a": [2]}\n')
    assert out.returncode == 0, out.stderr
    assert out.stderr.startswith("submitted 2 of 2 tasks (recorder)")
    messages = wait_for(lambda: broker.drain("taskqueue"), 5, "the submitted tasks")
    assert [body for _, body in messages] == [b"1", b'{"a":[2]}']
    for props, _ in messages:
        assert props.headers["worker_type"] == "recorder"
        assert len(props.message_id) == 32 and props.correlation_id == props.message_id
        assert (props.delivery_mode, props.content_type) == (2, "application/json")


def test_submit_file_shows_a_progress_bar_on_a_terminal(broker, workdir, vhost):
    config = f"{workdir}/config.ini"
    with open(config, "w") as f:
        f.write(config_text(vhost, "[DEFAULT]\nworkers: 0\n"))
    path = write_tasks(f"{workdir}/tasks.jsonl", [str(n) for n in range(300)])
    master, slave = pty.openpty()
    try:
        process = subprocess.Popen([TASKQUEUE, "submit", "--config", config, "--file", path,
                                    "recorder"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=slave)
        os.close(slave)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:     # EIO: the command exited and closed its end
                break
            if not chunk:
                break
            shown += chunk
        assert process.wait(60) == 0
    finally:
        os.close(master)
    text = shown.decode()
    assert re.search(r"\r\[#{10,}\] 300/300 100% [\d,]+/s done\x1b\[K\r?\n", text), text
    assert "submitted 300 of 300 tasks" in text
    assert broker.counts("taskqueue")[0] == 300


def test_submit_file_to_an_unreachable_broker_exits_4_and_says_where_to_resume(workdir, vhost):
    port = free_port()   # nothing listens there
    config = f"{workdir}/config.ini"
    with open(config, "w") as f:
        f.write(config_text(vhost, "[DEFAULT]\nworkers: 0\n", port=port))
    path = write_tasks(f"{workdir}/tasks.jsonl", ["1", "2", "3"])
    out = run("submit", "--config", config, "--file", path, "recorder")
    assert out.returncode == 4
    assert f"taskqueue: cannot connect to the broker: 127.0.0.1:{port}" in out.stderr
    assert "submitted 0 of 3 tasks" in out.stderr
    assert f"resume from line 1: tail -n +1 {path} | taskqueue submit --file - recorder" \
        in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("how", [[], ["--wait"], ["--delay", "5"]])
def test_submit_to_an_unreachable_broker_exits_4_as_status_does_naming_it(workdir, vhost, how):
    port = free_port()   # nothing listens there
    config = f"{workdir}/config.ini"
    with open(config, "w") as f:
        f.write(config_text(vhost, "[DEFAULT]\nworkers: 0\n", port=port))
    out = run("submit", "--config", config, *how, "recorder", "1")
    assert out.returncode == 4, out.stderr
    assert f"taskqueue: cannot connect to the broker: 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_submit_file_refused_midway_by_the_broker_exits_1_and_says_where_to_resume(
        broker, workdir, vhost):
    # Given a taskqueue that takes 100 messages and refuses (nacks) the next: a
    # classic queue, which enforces the limit exactly (a quorum queue overshoots it)
    policy = ["rabbitmqctl", "-q", "set_policy", "-p", vhost, "--apply-to", "queues",
              "tq-test-max-length", "^taskqueue$", '{"max-length": 100, "overflow": "reject-publish"}']
    subprocess.run(policy, check=True)
    try:
        config = f"{workdir}/config.ini"
        with open(config, "w") as f:
            f.write(config_text(vhost, "[DEFAULT]\nworkers: 0\n", amqp_extra="queue_type: classic\n"))
        path = write_tasks(f"{workdir}/tasks.jsonl", [str(n) for n in range(300)])
        # When 300 tasks are submitted
        out = run("submit", "--config", config, "--file", path, "recorder")
        # Then the first 100 are in, and the command says the broker refused line 101
        # and how to resume from there
        assert out.returncode == 1, out.stderr
        assert "taskqueue: line 101: the broker refused it (nack; 3 tries in 2 s)" in out.stderr
        assert "submitted 100 of 300 tasks" in out.stderr
        assert f"every task before line 101 of {path} is confirmed; resume from line 101: " \
               f"tail -n +101 {path} | taskqueue submit --file - recorder" in out.stderr
        assert broker.counts("taskqueue")[0] == 100
    finally:
        subprocess.run(["rabbitmqctl", "-q", "clear_policy", "-p", vhost, "tq-test-max-length"],
                       check=True)


@pytest.mark.timeout(120)
def test_submit_nacked_every_time_exits_1_after_3_tries_saying_so(workdir, amqp_port, broker_port):
    # Given task queues that take nothing (every publish nacked, each copy counted)
    with nacking_vhost(0, broker_port) as (vhost, broker):
        config = f"{workdir}/config.ini"
        with open(config, "w") as f:
            f.write(config_text(vhost, "[DEFAULT]\nworkers: 0\n", port=amqp_port,
                                amqp_extra="queue_type: classic\n"))
        # When one task is submitted, then a file of two
        out = run("submit", "--config", config, "recorder", "1")
        tasks = write_tasks(f"{workdir}/tasks.jsonl", ["2", "3"])
        out_file = run("submit", "--config", config, "--file", tasks, "recorder")
        # Then each exits 1 saying the broker refused it 3 times, and it was tried 3 times
        assert out.returncode == 1, out.stderr
        assert "taskqueue: the broker refused the task for recorder " in out.stderr
        assert "(nack; 3 tries in 2 s): is the queue full" in out.stderr
        assert out.stdout == "" and "Traceback" not in out.stderr
        assert out_file.returncode == 1, out_file.stderr
        assert "taskqueue: line 1: the broker refused it (nack; 3 tries in 2 s)" in out_file.stderr
        assert "submitted 0 of 2 tasks" in out_file.stderr
        wait_for(lambda: broker.counts("taskqueue_dead")[0] >= 9, 10, "9 nacked copies")
        assert broker.counts("taskqueue_dead")[0] == 9


@pytest.mark.timeout(120)
def test_submit_file_stops_cleanly_at_ctrl_c_and_says_where_to_resume(broker, workdir, vhost):
    config = f"{workdir}/config.ini"
    with open(config, "w") as f:
        f.write(config_text(vhost, "[DEFAULT]\nworkers: 0\n"))
    path = write_tasks(f"{workdir}/tasks.jsonl", [str(n) for n in range(300000)])
    process = subprocess.Popen(
        [TASKQUEUE, "submit", "--config", config, "--file", path, "recorder"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A shell's background job ignores SIGINT, and so would the command.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_for(lambda: broker.counts("taskqueue")[0] > 1000, 60, "the first tasks submitted")
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "taskqueue: interrupted (Ctrl-C)" in err and "Traceback" not in err
    confirmed = int(re.search(r"submitted (\d+) of 300000 tasks", err).group(1))
    assert 1000 < confirmed < 300000
    assert f"every task before line {confirmed + 1} of {path} is confirmed; resume from line " \
           f"{confirmed + 1}: tail -n +{confirmed + 1}" in err
    assert "without a confirm" not in err       # what was sent was confirmed before it stopped
    wait_for(lambda: broker.counts("taskqueue")[0] == confirmed, 10,
             lambda: f"{confirmed} tasks in taskqueue, not {broker.counts('taskqueue')[0]}")


def test_bin_taskqueue_runs_the_checkout_with_the_plugins_of_the_venv_it_is_given(
        workdir, vhost, tmp_path):
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    command = os.path.join(checkout, "bin", "taskqueue")
    path = f"{workdir}/config.ini"
    with open(path, "w") as f:
        f.write(config_text(vhost, "[DEFAULT]\nworkers: 0\n\n[recorder]\nworkers: 2\n"))
    # With the test venv: the checkout's command, the venv's plugins
    out = subprocess.run([command, "check-config", "--config", path], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "TASKQUEUE_VENV": sys.prefix})
    assert out.returncode == 0, out.stderr
    assert "recorder: tqtest.recorder:Recorder.factory" in out.stdout
    assert ["recorder", "-", "2", "-", "worker_recorder", "-", "reply", "queues", "-"] in [
        line.split() for line in out.stdout.splitlines()]
    # With a virtualenv that holds no taskqueue at all (Debian's gevent and pika only)
    bare = tmp_path / "bare"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", "--system-site-packages",
                    str(bare)], check=True, timeout=60)
    out = subprocess.run([command, "--version"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "TASKQUEUE_VENV": str(bare)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("taskqueue ")


def tool_config(workdir, vhost):
    path = f"{workdir}/config.ini"
    with open(path, "w") as f:
        f.write(config_text(vhost, "[DEFAULT]\nworkers: 0\n"))
    return path


@pytest.mark.parametrize("workitem", ["NaN", "1e400", "Infinity", "-Infinity", '{"a": [NaN]}'])
def test_submit_refuses_a_workitem_the_dispatcher_would_dead_letter_naming_it(
        broker, workdir, vhost, workitem):
    # Given a WORKITEM that Python's json reads but JSON has no such value for
    config = tool_config(workdir, vhost)
    # When it is submitted, as an argument or on stdin
    out = run("submit", "--config", config, "recorder", "--", workitem)   # -- for -Infinity
    piped = run("submit", "--config", config, "recorder", "-", input=workitem)
    # Then it is refused as bad input naming the argument and the value, and nothing is sent
    assert (out.returncode, out.stdout) == (2, ""), out.stderr
    assert out.stderr.startswith(f"taskqueue: WORKITEM {workitem!r}: not valid JSON ("), out.stderr
    assert (piped.returncode, piped.stdout) == (2, ""), piped.stderr
    assert piped.stderr.startswith(f"taskqueue: WORKITEM (stdin) {workitem!r}: not valid JSON")
    assert broker.counts("taskqueue") == (0, 0)


def test_submit_of_text_that_is_not_json_says_how_to_send_it_as_a_string(broker, workdir, vhost):
    out = run("submit", "--config", tool_config(workdir, vhost), "recorder", "some work")
    assert out.returncode == 2
    assert "taskqueue: WORKITEM 'some work': not valid JSON (Expecting value" in out.stderr
    assert """to send it as a JSON string, quote it: '"some work"'""" in out.stderr
    assert broker.counts("taskqueue") == (0, 0)


def test_submit_to_a_type_no_pool_serves_warns_and_still_submits(
        broker, start_pool, workdir, vhost):
    # Given a pool serving echo, and its dispatcher
    pool = start_pool("[DEFAULT]\nworkers: 0\n\n[echo]\nworkers: 1\n")
    wait_for(lambda: broker.counts("worker_echo")[1] == 1, 15, "the echo consumer")
    wait_for(lambda: broker.counts("taskqueue")[1] == 1, 15, "the dispatcher consuming")
    # When a task goes to a type no plugin of which is installed anywhere
    out = run("submit", "--config", pool.config_path, "nosuchtype", "{}")
    # Then it is submitted (exit 0, its message id), with a warning saying where it waits
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(r"[0-9a-f]{32}\n", out.stdout)
    assert out.stderr == ("taskqueue: warning: no process consumes worker_nosuchtype: the task "
                          "waits there until a pool with plugin nosuchtype runs\n")
    wait_for(lambda: broker.counts("worker_nosuchtype")[0] == 1, 15, "the task routed and waiting")
    # And so does a file of them
    file_out = run("submit", "--config", pool.config_path, "--file", "-", "nosuchtype",
                   input="1\n2\n")
    assert file_out.returncode == 0, file_out.stderr
    assert file_out.stderr.splitlines()[-1] == (
        "taskqueue: warning: no process consumes worker_nosuchtype: the 2 tasks wait there "
        "until a pool with plugin nosuchtype runs")
    # A served type has no warning
    served = run("submit", "--config", pool.config_path, "echo", "{}")
    assert (served.returncode, served.stderr) == (0, "")
    assert pool.stop() == 0


def test_submit_with_no_dispatcher_running_says_the_task_waits_in_taskqueue(
        broker, workdir, vhost):
    out = run("submit", "--config", tool_config(workdir, vhost), "nosuchtype", "{}")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ("taskqueue: warning: no process consumes taskqueue (no dispatcher "
                          "runs): the task waits there until one does, then in "
                          "worker_nosuchtype until a pool with plugin nosuchtype runs\n")
    assert broker.counts("taskqueue")[0] == 1
