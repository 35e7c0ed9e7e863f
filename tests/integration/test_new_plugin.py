"""The project `taskqueue new-plugin` writes, as it stands: its own tests pass (run with
pytest in its directory, this checkout on PYTHONPATH), and a real pool serves its worker
type once its metadata is on the pool's path (an egg-info built by its setup.py, the
entry point it declares; tests/system builds and installs its .deb)."""
import json
import os
import re
import subprocess
import sys

import pytest

from support import wait_for
from taskqueue.client import TaskFailed

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
#: The worker type of the generated plugin (its queue is in support.QUEUES).
NAME = "tq-fresh"
#: Debian's python3 has setuptools (run-tests installs python3-setuptools; the trixie
#: root has it): the venvs of Python 3.12 and later do not.
SETUPTOOLS_PYTHON = "/usr/bin/python3"


def new_plugin(workdir):
    """Run this checkout's `taskqueue new-plugin NAME` in `workdir`; the project's path."""
    project = os.path.join(workdir, f"taskqueue-{NAME}")
    out = subprocess.run([sys.executable, "-m", "taskqueue", "new-plugin", NAME], cwd=workdir,
                         env={**os.environ, "PYTHONPATH": REPO}, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return project


def egg_info(project):
    """The project's metadata (its entry point) beside its package, as setup.py writes it."""
    out = subprocess.run([SETUPTOOLS_PYTHON, "setup.py", "-q", "egg_info"], cwd=project,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    subprocess.run(["chmod", "-R", "a+rX", project], check=True)


def project_tests(project, pythonpath):
    """Run the project's own tests with pytest in its directory: (passed, skipped), output."""
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs"],
                         cwd=project, env={**os.environ, "PYTHONPATH": pythonpath},
                         capture_output=True, text=True, timeout=120)
    summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|skipped|failed|error)",
                                                      summary)}
    assert out.returncode == 0 and not counts.get("failed") and not counts.get("error"), \
        out.stdout + out.stderr
    return (counts.get("passed", 0), counts.get("skipped", 0)), out.stdout


@pytest.mark.timeout(300)
def test_the_generated_projects_own_tests_pass_before_and_after_it_is_installed(workdir):
    # Given the project as `taskqueue new-plugin` wrote it
    project = new_plugin(workdir)
    # When its tests run, this checkout on PYTHONPATH: every one passes but the
    # entry point's, skipped while the plugin is not installed
    counts, output = project_tests(project, REPO)
    assert counts == (7, 1), output
    assert "the plugin is not installed" in output
    # And once its metadata (its entry point) is on the path: that one passes too
    egg_info(project)
    counts, output = project_tests(project, os.pathsep.join([REPO, project]))
    assert counts == (8, 0), output


@pytest.mark.timeout(180)
def test_a_pool_serves_the_generated_plugin_through_the_entry_point_it_declares(
        workdir, broker, start_pool, client):
    # Given the generated project, its metadata on the pool's path (nothing installed)
    project = new_plugin(workdir)
    egg_info(project)
    pool = start_pool(f"[DEFAULT]\nworkers: 0\n\n[{NAME}]\nworkers: 1\n",
                      command="workerpool", env={"PYTHONPATH": project})
    wait_for(lambda: broker.counts(f"worker_{NAME}")[1] == 1, 30, f"a {NAME} consumer")
    # When a task is called: the template's worker counts its words and replies
    assert json.loads(client.call(NAME, {"text": "three small words"}, timeout=20)) == \
        {"words": 3}
    # And a workitem it can never do is rejected: the caller told, the task dead-lettered
    with pytest.raises(TaskFailed):
        client.call(NAME, {"txt": "no text"}, timeout=20)
    wait_for(lambda: broker.counts("taskqueue_dead")[0] == 1, 20, "the dead letter")
    pool.wait_log(r"task \S+ rejected: expected a JSON object with a string \"text\"")
