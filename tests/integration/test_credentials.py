"""No broker password in anything a run writes; a config holding one that every user can read
is refused.

The pool connects as a broker user of its own, with a distinctive password that
is also the id of a task whose plugin error quotes it (so a traceback, a log
line and a dead-letter reason would all carry it, unredacted). The user is
created only after the pool's first connections were refused, so the failure
path (log lines, `taskqueue status`'s broker error) is covered as well.
"""
import json
import os
import subprocess
import uuid

import pytest

from nodes import free_port
from support import TASKQUEUE, config_text, recorder_config, wait_for


@pytest.fixture
def broker_user(vhost):
    """A broker user (name, password) that does not exist yet: create() makes it."""
    name, password = f"tq-creds-{uuid.uuid4().hex[:6]}", f"Pw-{uuid.uuid4().hex}-Zq"

    def create():
        subprocess.run(["rabbitmqctl", "-q", "add_user", name, password], check=True,
                       capture_output=True)
        subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost, name,
                        ".*", ".*", ".*"], check=True, capture_output=True)
    yield name, password, create
    subprocess.run(["rabbitmqctl", "-q", "delete_user", name], check=False, capture_output=True)


def scrape(port):
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def status(config_path, *args):
    return subprocess.run([TASKQUEUE, "status", "--config", config_path, *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("given", ["url", "password_file"])
def test_no_run_output_holds_the_password(broker, start_pool, records, workdir, vhost,
                                          broker_user, given):
    user, password, create_user = broker_user
    if given == "url":
        amqp = f"[amqp]\nurl: amqp://{user}:{password}@127.0.0.1:5672/{vhost}\n"
    else:
        secret = os.path.join(workdir, "broker-password")
        with open(secret, "w") as f:
            f.write(password + "\n")
        os.chmod(secret, 0o600)
        amqp = (f"[amqp]\nhost: 127.0.0.1\nvhost: {vhost}\nuser: {user}\n"
                f"password_file: {secret}\n")
    port = free_port()
    # (one retry: the task is dead-lettered by taskqueue, with the error as its reason)
    body = recorder_config(records, extra="max_retries: 1\nretry_delay: 1\n") + f"\n[metrics]\nport: {port}\n\n{amqp}"
    # Given a pool logging at debug whose broker user does not exist yet
    pool = start_pool(body, raw=True, extra_args=("-v",))
    pool.wait_log(r"ACCESS_REFUSED|access refused|auth", timeout=30)
    refused = status(pool.config_path)
    # When the user appears, a task fails quoting the password, and status and metrics are asked
    create_user()
    pool.wait_log(rf"metrics on http://127.0.0.1:{port}/metrics")
    broker.submit("recorder", {"id": password, "raise": True})
    wait_for(lambda: broker.counts("taskqueue_dead")[0] == 1, 60, "the task dead-lettered")
    shown = [status(pool.config_path), status(pool.config_path, "--json")]
    metrics = scrape(port)
    titles = []
    for pid in [pool.pid] + pool.children():
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            titles.append(f.read().decode(errors="replace"))
    dead = broker.drain("taskqueue_dead")
    assert pool.stop() == 0
    # Then the password is nowhere: log, status, metrics, process titles, dead-letter headers
    outputs = {"log": pool.log(), "refused status": refused.stdout + refused.stderr,
               "status": "".join(out.stdout + out.stderr for out in shown),
               "metrics": metrics, "process titles": "\n".join(titles),
               "dead-letter headers": json.dumps([props.headers for props, _ in dead],
                                                 default=str)}
    assert "asked to fail" in outputs["log"]          # the error was logged, redacted
    assert "asked to fail after 1 retries" in outputs["dead-letter headers"]   # its reason too
    assert "recorder" in outputs["metrics"] and "broker" in outputs["status"]
    for where, text in outputs.items():
        assert password not in text, f"the password is in the {where}"
        assert password.split("-")[1] not in text, f"part of the password is in the {where}"


@pytest.mark.parametrize("command", ["run", "workerpool", "dispatcher", "check-config"])
def test_a_world_readable_config_with_a_password_is_refused(workdir, vhost, command):
    path = os.path.join(workdir, "config.ini")
    with open(path, "w") as f:
        f.write(config_text(vhost, "[DEFAULT]\nworkers: 0\n",
                            amqp_extra="user: guest\npassword: guest\n",
                            status_dir=os.path.join(workdir, "run")))
    os.chmod(path, 0o644)
    result = subprocess.run([TASKQUEUE, command, "--config", path], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert (f"taskqueue: {path}: holds [amqp] password and is readable by every user (mode 0644); "
            f"refusing to use it: chmod 640 {path}") in result.stderr
    os.chmod(path, 0o640)
    if command == "check-config":
        assert subprocess.run([TASKQUEUE, command, "--config", path], capture_output=True,
                              timeout=60).returncode == 0
