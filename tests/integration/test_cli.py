"""The command line: check-config, submit, and refusing a bad config."""
import json
import os
import subprocess

from support import TASKQUEUE, config_text, wait_for


def run(*args, **kwargs):
    return subprocess.run([TASKQUEUE, *args], capture_output=True, text=True, timeout=60, **kwargs)


def test_check_config_lists_plugins_and_the_processes_it_would_start(workdir, vhost):
    path = f"{workdir}/config.ini"
    with open(path, "w") as f:
        f.write(config_text(vhost, "[DEFAULT]\nworkers: 0\n\n[recorder]\nworkers: 3\n"))
    out = run("check-config", "--config", path)
    assert out.returncode == 0, out.stderr
    assert "recorder: tqtest.recorder:Recorder.factory" in out.stdout
    assert "workerext: extpackage.workerext:Worker.factory" in out.stdout
    lines = [line.split() for line in out.stdout.splitlines()]
    assert ["recorder", "-", "3", "-", "worker_recorder"] in lines
    assert ["dispatcher", "-", "1", "-", "taskqueue"] in lines


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


def test_submit_publishes_the_envelope_and_prints_its_message_id(broker, workdir, vhost):
    path = f"{workdir}/config.ini"
    with open(path, "w") as f:
        f.write(config_text(vhost, "[DEFAULT]\nworkers: 0\n"))
    out = run("submit", "--config", path, "recorder", '{"a": [1, 2]}')
    assert out.returncode == 0, out.stderr
    message_id = out.stdout.strip()
    from_stdin = run("submit", "--config", path, "recorder", "-", input='"text"')
    assert from_stdin.returncode == 0, from_stdin.stderr
    messages = wait_for(lambda: broker.drain("taskqueue"), 5, "the submitted envelopes")
    assert [p.message_id for p, _ in messages][0] == message_id
    assert json.loads(messages[0][1]) == {"worker_type": "recorder", "workitem": {"a": [1, 2]}}
    assert json.loads(messages[1][1]) == {"worker_type": "recorder", "workitem": "text"}
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
