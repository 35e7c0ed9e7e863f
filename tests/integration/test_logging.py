"""[logging]: every process's lines in one file, each naming who and which task; levels;
the command line overriding the section; refusing a bad section."""
import os
import pwd
import re
import signal
import subprocess

import pytest

from support import TASKQUEUE, config_text, recorder_config, wait_for

#: A line of the file: time, pid, component and child, the task if any, level.
LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} taskqueue\[\d+\] "
                  r"(supervisor|dispatcher dispatcher#\d+|worker [\w.-]+(/[\w.-]+)?#\d+)"
                  r"( task=\S+)? (DEBUG|INFO|WARNING|ERROR): (?!\| ).*"
                  r"|(?P<head>.* (DEBUG|INFO|WARNING|ERROR): )\| .*")


def logging_section(path, extra=""):
    return f"\n[logging]\ntarget: file\npath: {path}\n{extra}"


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def wait_file(path, pattern, timeout=15):
    """Wait until `pattern` matches a line of the file at `path`; return the match."""
    return wait_for(lambda: re.search(pattern, read(path), re.MULTILINE), timeout,
                    lambda: f"a line matching {pattern!r} in {path}\n--- file:\n{read(path)[-3000:]}")


def run(*args):
    return subprocess.run([TASKQUEUE, *args], capture_output=True, text=True, timeout=60)


def test_file_target_gets_the_lines_of_every_process_each_naming_its_task(
        broker, start_pool, workdir, records):
    # Given a pool logging to a file the supervisor opens as root, its worker running as nobody
    path = f"{workdir}/taskqueue.log"
    pool = start_pool(recorder_config(records, extra="user: nobody\n") + logging_section(path),
                      log=None)
    wait_for(lambda: broker.counts("worker_recorder")[1] == 1, 15, "the worker consuming")
    # When the plugin logs from its handle_task thread and returns unsettled, a task raises,
    # and the dispatcher gets a message it cannot route
    broker.submit("recorder", {"id": "t1", "log": "hello from the plugin", "noack": True},
                  message_id="msg-log-1")
    broker.submit("recorder", {"id": "t2", "raise": True}, message_id="msg-log-2")
    broker.publish_raw(b"{not json", message_id="msg-bad")
    # Then the file has the lines of the supervisor, the dispatcher and the worker
    wait_file(path, r"task=msg-log-2 ERROR: \| RuntimeError: task t2 asked to fail$")
    worker = records.all()[0]
    assert worker["uid"] == pwd.getpwnam("nobody").pw_uid
    stat = os.stat(path)
    assert (stat.st_uid, stat.st_mode & 0o777) == (0, 0o640)   # nobody could not open it
    text = read(path)
    assert re.search(rf"^.* taskqueue\[{pool.pid}\] supervisor INFO: supervisor started", text, re.M)
    dispatcher = re.search(r"^.* taskqueue\[(\d+)\] dispatcher dispatcher#0 INFO: routing taskqueue",
                           text, re.M)
    assert dispatcher and int(dispatcher.group(1)) not in (pool.pid, worker["pid"])
    assert re.search(r"^.* dispatcher dispatcher#0 task=msg-bad WARNING: dead-lettering message "
                     r"msg-bad", text, re.M)
    # ... the worker's own lines without a task, and those about a task with its message id,
    # the plugin's from its handle_task thread included
    head = rf"^.* taskqueue\[{worker['pid']}\] worker recorder#0"
    assert re.search(rf"{head} INFO: consuming worker_recorder", text, re.M)
    assert re.search(rf"{head} task=msg-log-1 INFO: hello from the plugin$", text, re.M)
    assert re.search(rf"{head} task=msg-log-1 WARNING: task msg-log-1 \(delivery \d+\): "
                     r"handle_task returned without settling it", text, re.M)
    assert re.search(rf"{head} task=msg-log-2 ERROR: task msg-log-2 \(delivery \d+\) raised", text, re.M)
    # ... and nothing on stderr
    assert "supervisor started" not in pool.log()
    assert pool.stop() == 0
    assert read(path).rstrip().endswith("supervisor INFO: supervisor stopped")
    # Every line has the documented form; continuation lines repeat their event's header
    lines = read(path).splitlines()
    for before, line in zip([""] + lines, lines):
        match = LINE.fullmatch(line)
        assert match, line
        if match.group("head"):
            assert before.startswith(match.group("head")), (before, line)


@pytest.mark.parametrize("section, args, debug", [
    ("", (), False),                       # info by default
    ("level: debug\n", (), True),
    ("level: error\n", ("-v",), True),     # -v forces debug
])
def test_debug_lines_appear_only_at_level_debug(
        broker, start_pool, workdir, records, section, args, debug):
    path = f"{workdir}/taskqueue.log"
    pool = start_pool(recorder_config(records) + logging_section(path, section), log=None,
                      extra_args=args)
    broker.submit("recorder", {"id": "t1", "log": "marker"}, message_id="m1")
    # The plugin logs its DEBUG line before its INFO line, from the same thread.
    wait_file(path, r"worker recorder#0 task=m1 INFO: marker$")
    text = read(path)
    assert bool(re.search(r"worker recorder#0 task=m1 DEBUG: debug: marker$", text, re.M)) is debug
    assert bool(re.search(r"supervisor DEBUG: recorder#0 forked pid=\d+$", text, re.M)) is debug
    assert pool.stop() == 0


def test_level_warning_leaves_out_info_lines(broker, start_pool, workdir, records):
    path = f"{workdir}/taskqueue.log"
    pool = start_pool(recorder_config(records) + logging_section(path, "level: WARNING\n"),
                      log=None)
    broker.submit("recorder", {"id": "t1", "log": "marker", "noack": True}, message_id="m1")
    wait_file(path, r"worker recorder#0 task=m1 WARNING: task m1 .*without settling it")
    assert pool.stop() == 0
    assert not re.search(r" (INFO|DEBUG): ", read(path))


def test_log_on_the_command_line_overrides_the_sections_target(broker, start_pool, workdir,
                                                               records):
    path = f"{workdir}/taskqueue.log"
    pool = start_pool(recorder_config(records) + logging_section(path, "level: debug\n"),
                      log="stderr")
    pool.wait_log(r"^.* worker recorder#0 INFO: consuming worker_recorder ")
    assert re.search(r" supervisor DEBUG: recorder#0 forked", pool.log())  # the level still applies
    assert not os.path.exists(path)
    assert pool.stop() == 0


def test_reload_keeps_the_logging_it_started_with_and_says_so(broker, start_pool, workdir,
                                                              records):
    path = f"{workdir}/taskqueue.log"
    pool = start_pool(recorder_config(records) + logging_section(path), log=None)
    wait_file(path, r"worker recorder#0 INFO: consuming worker_recorder ")
    with open(pool.config_path) as f:
        changed = f.read().replace(f"path: {path}", f"path: {workdir}/other.log")
    with open(pool.config_path, "w") as f:
        f.write(changed)
    os.kill(pool.pid, signal.SIGHUP)
    wait_file(path, r"supervisor WARNING: .*: \[logging\] changed; it applies when taskqueue restarts$")
    wait_file(path, r"supervisor INFO: reload: 0 added, 0 changed, 0 removed, 2 unchanged$")
    assert not os.path.exists(f"{workdir}/other.log")
    assert pool.stop() == 0


@pytest.mark.parametrize("section, message", [
    ("[logging]\ntarget: file\n", "[logging] target = 'file': expected a path option"),
    ("[logging]\nlevel: loud\n",
     "[logging] level = 'loud': expected one of debug, info, warning, error"),
    ("[logging]\ntarget: journal\n",
     "[logging] target = 'journal': expected one of auto, syslog, stderr, file"),
    ("[logging]\ntarget: file\npath: taskqueue.log\n",
     "[logging] path = 'taskqueue.log': expected the absolute path of a file"),
])
def test_bad_logging_section_refuses_to_start_naming_file_section_option_and_value(
        workdir, vhost, section, message):
    path = f"{workdir}/config.ini"
    with open(path, "w") as f:
        f.write(config_text(vhost, f"[DEFAULT]\nworkers: 0\n\n{section}"))
    for command in ("run", "workerpool", "dispatcher", "check-config"):
        out = run(command, "--config", path)
        assert out.returncode == 2, (command, out.stderr)
        assert f"taskqueue: {path}: {message}\n" == out.stderr, command


def test_log_file_that_cannot_be_opened_refuses_to_start(workdir, vhost):
    path = f"{workdir}/config.ini"
    log_path = f"{workdir}/missing/taskqueue.log"
    with open(path, "w") as f:
        f.write(config_text(vhost, "[DEFAULT]\nworkers: 0\n" + logging_section(log_path)))
    out = run("run", "--config", path)
    assert out.returncode == 2
    assert out.stderr == (f"taskqueue: {path}: [logging] path = {log_path!r}: cannot open it for "
                          "appending: No such file or directory\n")
    checked = run("check-config", "--config", path)
    assert checked.returncode == 2
    assert checked.stderr == (f"taskqueue: {path}: [logging] path = {log_path!r}: expected a file "
                              f"in an existing directory ({workdir}/missing is none)\n")


def test_check_config_shows_the_logging(workdir, vhost):
    path = f"{workdir}/config.ini"
    for section, shown in [("", "info to auto"), ("[logging]\nlevel: debug\ntarget: syslog\n",
                                                  "debug to syslog"),
                           (logging_section(f"{workdir}/t.log"), f"info to file {workdir}/t.log")]:
        with open(path, "w") as f:
            f.write(config_text(vhost, "[DEFAULT]\nworkers: 0\n" + section))
        out = run("check-config", "--config", path)
        assert out.returncode == 0, out.stderr
        assert f"\nlogging: {shown}\n" in out.stdout
    assert not os.path.exists(f"{workdir}/t.log")   # checked, not created
