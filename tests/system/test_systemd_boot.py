"""The .debs under a real systemd as PID 1, on Debian 12 and on Debian 13 (issue 25).

Each Debian root (tests/trixie/make-root ROOT SUITE, cached under /var/tmp) is
booted with its own systemd as PID 1 (bootroot.py: an overlay over the root,
namespaces of its own, its own RabbitMQ started by systemd from the
rabbitmq-server package's unit). Inside it the packages are built with that
release's tools, installed with apt, and driven as an operator would: both
services active under systemd as the user taskqueue; the .deb of a plugin
project `taskqueue new-plugin` wrote (built and lintian-checked inside, by
newplugin_deb.py) makes the dpkg trigger reload the pool (same main pid) and its worker answers
`taskqueue submit --wait`; purging the plugin stops that worker and leaves
the pool running; stopping and disabling the services ends every process.

Runs once per CI run, from the host (it covers both releases itself): the
trixie stack, which runs tests/system inside the Debian 13 root, skips it.
"""
import json
import os
import shutil
import subprocess
import time

import pytest

from bootroot import BootedRoot, BootError, cannot_boot
from systemd_figures import FIGURES

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ROOTS = {
    "bookworm": "/var/tmp/taskqueue-bookworm/root",
    "trixie": os.environ.get("TASKQUEUE_TRIXIE_ROOT", "/var/tmp/taskqueue-trixie/root"),
}
SERVICES = ["taskqueue-dispatcher", "taskqueue-workerpool"]
PACKAGES = ["python3-taskqueue", "taskqueue"] + SERVICES
#: The plugin .deb's builder, run inside the booted root with its python3: module (in
#: tests/system) and function (workdir, name, python) -> path of the .deb, and the
#: plugin's name, which is its worker type.
PLUGIN_BUILDER, PLUGIN_NAME = ("newplugin_deb", "build_new_plugin_deb"), "thumbnail"
#: Enabled in the roots but of no use here: they would only cost time (prometheus,
#: a console getty) or take apt's lock in the middle of the test (the apt timers).
MASK = ["prometheus.service", "console-getty.service", "apt-daily.timer",
        "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "man-db.timer"]
SRC = "/srv/taskqueue-src"      # the checkout, in the booted system
DEBS = "/srv/debs"              # the plugin's build directory there
APT = ["apt-get", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=120",
       "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold"]

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(bool(os.environ.get("TASKQUEUE_TRIXIE_RUN")),
                       reason="boots both Debian roots itself: runs from the host, "
                              "not again inside the trixie stack's root"),
    pytest.mark.skipif(cannot_boot() is not None, reason=str(cannot_boot())),
]


def wait_for(predicate, timeout, what, system=None):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            journal = f"\n--- journal\n{system.journal()}" if system else ""
            pytest.fail(f"timed out after {timeout}s waiting for {what}{journal}")
        time.sleep(0.2)
    return result


def run(system, *cmd, check=True, timeout=600):
    try:
        return system.run(*cmd, check=check, timeout=timeout)
    except BootError as e:
        pytest.fail(str(e))


def make_root(suite):
    """The cached root, made or completed by tests/trixie/make-root (network the first time)."""
    started = time.monotonic()
    out = subprocess.run([os.path.join(REPO, "tests", "trixie", "make-root"), ROOTS[suite], suite],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.fail(f"make-root {ROOTS[suite]} {suite} exited {out.returncode}\n"
                    f"{out.stdout[-3000:]}{out.stderr[-3000:]}")
    return time.monotonic() - started


def taskqueue_in(root):
    """The taskqueue packages dpkg has in `root` (installed, or their config files left)."""
    out = subprocess.run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W",
                          "-f=${Package} ${db:Status-Status}\\n", "*taskqueue*"],
                         capture_output=True, text=True)
    return [line.split()[0] for line in out.stdout.splitlines()
            if line.split()[1:] not in ([], ["not-installed"])]


@pytest.fixture(scope="module", params=sorted(ROOTS))
def system(request):
    """The root of a Debian release booted, with the checkout in it and services allowed."""
    suite = request.param
    figures = FIGURES.setdefault(suite, {})
    figures["make-root (s)"] = round(make_root(suite), 1)
    # The root is the overlay's lower layer: a trixie stack's tests/system installs
    # into that root itself while it runs (or left them after a crash).
    if found := taskqueue_in(ROOTS[suite]):
        pytest.fail(f"{ROOTS[suite]} has {', '.join(found)} installed: a trixie stack run "
                    "using the root now, or one that left them (purge them in the root)")
    booted = BootedRoot(ROOTS[suite], mask=MASK)
    try:
        try:
            booted.start()
        except BootError as e:
            pytest.fail(f"booting {ROOTS[suite]}: {e}")
        figures["boot to running/degraded (s)"] = round(booted.seconds, 1)
        booted.suite = suite
        # make-root forbids service starts (policy-rc.d exits 101) for its installs on
        # this machine; in the booted system apt is to start them as on a real host.
        run(booted, "rm", "-f", "/usr/sbin/policy-rc.d")
        shutil.copytree(REPO, booted.path(SRC), ignore=shutil.ignore_patterns(
            ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
        yield booted
    finally:
        booted.stop()


def deb_paths(system, directory, packages):
    names = os.listdir(system.path(directory))
    found = {name.split("_")[0]: f"{directory}/{name}" for name in names if name.endswith(".deb")}
    assert set(packages) <= set(found), (packages, names)
    return [found[p] for p in packages]


@pytest.fixture(scope="module")
def installed(system):
    """The packages, built inside with this release's debhelper and installed with apt."""
    started = time.monotonic()
    run(system, "sh", "-c", f"cd {SRC} && dpkg-buildpackage -us -uc -b >/srv/build.log 2>&1 "
                            "|| { tail -n 40 /srv/build.log; exit 1; }")
    FIGURES[system.suite]["build the .debs (s)"] = round(time.monotonic() - started, 1)
    started = time.monotonic()
    run(system, *APT, "install", *deb_paths(system, "/srv", PACKAGES))
    FIGURES[system.suite]["apt install (s)"] = round(time.monotonic() - started, 1)
    return system


@pytest.fixture(scope="module")
def plugin_deb(system):
    module, function = PLUGIN_BUILDER
    os.makedirs(system.path(DEBS))
    out = run(system, "python3", "-c",
              f"import sys; sys.path.insert(0, '{SRC}/tests/system'); "
              f"from {module} import {function} as build; "
              "print(build(sys.argv[1], sys.argv[2], sys.executable))", DEBS, PLUGIN_NAME)
    deb = out.stdout.strip().splitlines()[-1]
    package = run(system, "dpkg-deb", "-f", deb, "Package").stdout.strip()
    return deb, package


def show(system, service, prop):
    return run(system, "systemctl", "show", "-p", prop, "--value", service).stdout.strip()


def user_of(system, pid):
    return run(system, "ps", "-o", "user=", "-p", str(pid), check=False).stdout.strip()


def running(system, pid):
    return run(system, "kill", "-0", str(pid), check=False).returncode == 0


def status(system):
    out = run(system, "taskqueue", "status", "--json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def worker_pids(system, worker_type):
    """The pids of the running pool's children of `worker_type` (taskqueue status)."""
    view = status(system) or {"supervisors": []}
    return [child["pid"] for answer in view["supervisors"]
            if answer["supervisor"]["name"] == "taskqueue-workerpool"
            for group in answer["groups"] if group["type"] == worker_type
            for child in group["children"] if child["pid"] and child["state"] == "running"]


def journal_lines(system, unit, since_cursor):
    out = run(system, "journalctl", "--no-pager", "-o", "cat", "--after-cursor", since_cursor,
              "-u", unit, check=False)
    return out.stdout.splitlines()


def cursor(system):
    out = run(system, "journalctl", "--no-pager", "-n", "0", "--show-cursor", "-q")
    return out.stdout.strip().rsplit("cursor: ", 1)[-1]


def test_both_services_are_active_under_systemd_as_the_taskqueue_user(installed):
    system = installed
    # Given the packages just installed with apt under a booted systemd
    for service in SERVICES:
        # Then systemd started each one, and its main process gave up root for taskqueue
        wait_for(lambda: run(system, "systemctl", "is-active", service, check=False)
                 .stdout.strip() == "active", 30, f"{service} active", system)
        pid = int(show(system, service, "MainPID"))
        assert pid > 0, service
        wait_for(lambda: user_of(system, pid) == "taskqueue", 30,
                 f"{service}'s main process {pid} running as taskqueue", system)
        assert show(system, service, "UnitFileState") == "enabled", service
    # And both answer on their status sockets
    view = wait_for(lambda: (found := status(system)) and len(found["supervisors"]) == 2 and found,
                    30, "both services in taskqueue status", system)
    assert {a["supervisor"]["name"] for a in view["supervisors"]} == set(SERVICES)
    assert worker_pids(system, PLUGIN_NAME) == []   # no plugin installed yet


def test_a_plugin_deb_reloads_the_pool_whose_new_worker_answers(installed, plugin_deb):
    system = installed
    deb, package = plugin_deb
    # Given the pool running under systemd, without the plugin
    pool = int(show(system, "taskqueue-workerpool", "MainPID"))
    before = cursor(system)
    # When the plugin's .deb is installed with apt
    run(system, *APT, "install", deb)
    # Then the package's dpkg trigger has systemd reload the pool: the same process
    wait_for(lambda: any(line.startswith("Reloaded ") for line in
                         journal_lines(system, "taskqueue-workerpool", before)),
             30, "systemd's 'Reloaded' line for taskqueue-workerpool", system)
    assert int(show(system, "taskqueue-workerpool", "MainPID")) == pool
    assert show(system, "taskqueue-workerpool", "ActiveState") == "active"
    # And the re-scanned pool runs the new worker type, which answers a task
    wait_for(lambda: worker_pids(system, PLUGIN_NAME), 30, f"a {PLUGIN_NAME} worker", system)
    # (the worker `taskqueue new-plugin` writes counts the words of "text")
    out = run(system, "taskqueue", "submit", "--wait", "--timeout", "30", PLUGIN_NAME,
              '{"text": "hello from systemd"}', timeout=60)
    assert json.loads(out.stdout) == {"words": 3}, out.stdout + out.stderr
    FIGURES[system.suite]["plugin .deb"] = package


def test_purging_the_plugin_stops_its_worker_and_the_pool_runs_on(installed, plugin_deb):
    system = installed
    _, package = plugin_deb
    # Given the pool running the plugin's worker
    pool = int(show(system, "taskqueue-workerpool", "MainPID"))
    workers = wait_for(lambda: worker_pids(system, PLUGIN_NAME), 30, "the plugin's worker", system)
    # When the plugin is purged
    run(system, *APT, "purge", package)
    # Then its worker processes are gone, and the same pool is still active
    wait_for(lambda: not any(running(system, pid) for pid in workers), 30,
             f"the {PLUGIN_NAME} worker processes {workers} gone", system)
    assert worker_pids(system, PLUGIN_NAME) == []
    assert int(show(system, "taskqueue-workerpool", "MainPID")) == pool
    assert show(system, "taskqueue-workerpool", "ActiveState") == "active"


def test_stopping_and_disabling_the_services_ends_every_taskqueue_process(installed):
    system = installed
    # Given both services running
    pids = [int(show(system, service, "MainPID")) for service in SERVICES]
    assert all(pids), pids
    # When they are stopped and disabled
    run(system, "systemctl", "disable", "--now", *SERVICES)
    # Then no process of the user taskqueue is left, and they would not start at boot
    wait_for(lambda: run(system, "pgrep", "-u", "taskqueue", check=False).returncode == 1,
             60, "no process of the user taskqueue", system)
    for service in SERVICES:
        assert run(system, "systemctl", "is-active", service, check=False).stdout.strip() \
            == "inactive", service
        assert show(system, service, "UnitFileState") == "disabled", service
