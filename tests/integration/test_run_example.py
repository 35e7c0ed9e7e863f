"""The README's first commands, as a newcomer runs them: from a fresh clone with the
default umask, `./run-example`, then `bin/taskqueue submit --wait echo ...` from another
shell gets its reply, and Ctrl-C stops it all.

git keeps only the executable bit of a file: a clone checks everything else out 0644
(umask 022), whatever mode the file had where it was committed. Issue 20 found
`./run-example` refusing its own examples/config.ini on a fresh clone (it held a
password and was readable by every user) while the developer's checkout, 0640, worked.

It runs against the machine's broker on vhost "/", as the README's commands do, and
deletes the queues it made there (only those: a queue that was there before is left).
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from support import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.timeout(300)


def _queues():
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", "/", "name"],
                         capture_output=True, text=True, check=True).stdout.split()
    return {name for name in out if name != "name"}


def _fresh_copy(dest):
    """A fresh clone of this checkout; without git metadata (the trixie root gets a
    copy without .git), the tracked tree copied with the modes a clone would give."""
    if os.path.isdir(os.path.join(REPO, ".git")) and shutil.which("git"):
        subprocess.run(["git", "clone", "-q", REPO, dest], check=True,
                       preexec_fn=lambda: os.umask(0o022))
        return
    shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(
        ".git", "build", "*.egg-info", "__pycache__"))
    for top, dirs, files in os.walk(dest):
        for name in files:
            path = os.path.join(top, name)
            executable = os.stat(path).st_mode & 0o100
            os.chmod(path, 0o755 if executable else 0o644)


@pytest.fixture
def clone():
    parent = tempfile.mkdtemp(prefix="taskqueue-clone-")
    os.chmod(parent, 0o755)
    before = _queues()
    yield os.path.join(parent, "taskqueue")
    shutil.rmtree(parent, ignore_errors=True)
    for queue in _queues() - before:
        if queue.startswith(("taskqueue", "worker_")):
            subprocess.run(["rabbitmqctl", "-q", "delete_queue", "-p", "/", queue], check=False)


def test_run_example_from_a_fresh_clone_answers_a_submitted_task(clone):
    _fresh_copy(clone)
    config = os.path.join(clone, "examples", "config.ini")
    assert os.stat(config).st_mode & 0o777 == 0o644, "a clone is 0644: the case to prove"
    env = dict(os.environ, TASKQUEUE_VENV=os.path.join(os.path.dirname(clone), "venv"),
               PIP_NO_INDEX="1")   # nothing downloaded: the README's command works offline
    env.pop("PYTHONPATH", None)
    log_path = os.path.join(os.path.dirname(clone), "run-example.log")
    with open(log_path, "wb") as log:
        run = subprocess.Popen(["./run-example"], cwd=clone, env=env, stdout=log,
                               stderr=subprocess.STDOUT, preexec_fn=lambda: os.umask(0o022))

    def log_text():
        with open(log_path, errors="replace") as f:
            return f.read()
    try:
        wait_for(lambda: "echo#0" in log_text() and "RUNNING" in log_text()
                 or run.poll() is not None, 180,
                 lambda: f"./run-example to start its echo worker; its output:\n{log_text()}")
        assert run.poll() is None, f"./run-example ended ({run.returncode}):\n{log_text()}"
        submit = subprocess.run(
            ["bin/taskqueue", "submit", "--config", "examples/config.ini", "--wait",
             "--timeout", "60", "echo", '{"hello": "world"}'],
            cwd=clone, env=env, capture_output=True, text=True, timeout=90)
        assert submit.returncode == 0, (submit.stdout, submit.stderr, log_text())
        assert submit.stdout.strip() == '{"hello":"world"}', (submit.stdout, submit.stderr)
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGINT)   # Ctrl-C: the README's way to stop it
        try:
            code = run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()
            raise
    assert code == 0, f"./run-example exit {code} after Ctrl-C:\n{log_text()}"
    assert "supervisor stopped" in log_text()
    assert "refusing" not in log_text()
    sys.stdout.write(log_text()[-2000:])
