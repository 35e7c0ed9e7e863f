"""The built .debs, installed with apt and driven by their init scripts.

Builds every package from this checkout with Debian's own python3 (a clean
PATH: pybuild would otherwise pick up another python3), installs them with
apt, and checks what an operator sees: services started on install, a reply
through the whole chain, a killed worker replaced, a plugin .deb picked up
by the running pool through the dpkg trigger, a package's schedule fired with
no line in the config, the .deb of a project `taskqueue new-plugin` wrote
(newplugin_deb.py) served by the running pool, and nothing left after purge.

This machine's /usr/sbin/policy-rc.d forbids service starts, as container
images do. apt runs under `unshare -m` with a permissive policy-rc.d bound
over it, so only this test's apt sees it: the machine's deny-all policy stays in
force for every other apt user, and starts are allowed only inside. The services
use the packaged config, unchanged: the local broker's vhost `/`; the test
deletes the queues it made there.
"""
import calendar
import grp
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time

import pika
import pytest

from newplugin_deb import build_new_plugin_deb
from support import alive

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
             "DEBIAN_FRONTEND": "noninteractive"}
BUILD_DEPENDS = ["debhelper", "dh-python", "python3-all", "pybuild-plugin-pyproject",
                 "python3-setuptools", "python3-wheel", "lintian",
                 "python3-gevent", "python3-pika", "python3-croniter", "rabbitmq-server", "adduser"]
SERVICES = ["taskqueue-dispatcher", "taskqueue-workerpool"]
PACKAGES = ["python3-taskqueue", "taskqueue"] + SERVICES
PLUGIN = "python3-taskqueue-echo"
#: A plugin package that ships only a schedule (tests/system/echo-tick): `echo-tick`,
#: every 2s, for PLUGIN's worker type.
TICK = "python3-taskqueue-echo-tick"
TICK_SCHEDULE = "echo-tick"
#: The worker type of a plugin project `taskqueue new-plugin` writes (newplugin_deb.py),
#: and its package.
NEW_TYPE = "tq-fresh"
NEW_PLUGIN = f"python3-taskqueue-{NEW_TYPE}"
APT = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=600",
       "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold"]
QUEUES = ["taskqueue", "taskqueue_dead", "worker_echo", f"worker_{NEW_TYPE}",
          f"worker_{NEW_TYPE}+high"]

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.getuid() != 0, reason="installs packages and runs services: needs root"),
]


def run(cmd, check=True, **kwargs):
    out = subprocess.run(cmd, capture_output=True, text=True, env=CLEAN_ENV, **kwargs)
    if check and out.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {out.returncode}\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)
    return result


def holds_for(predicate, seconds, what):
    """Watch `predicate` for `seconds`: fail as soon as it is false (an absence, such
    as no new firing, is seen only by watching for a while)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not predicate():
            pytest.fail(f"{what}: no longer so after {seconds - (deadline - time.monotonic()):.1f}s")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def scratch():
    path = tempfile.mkdtemp(prefix="taskqueue-system-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def apt_as_on_a_real_host(scratch):
    """Run apt with services allowed to start, in a private mount namespace."""
    allow = os.path.join(scratch, "policy-rc.d-allow-all")
    with open(allow, "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
    os.chmod(allow, 0o755)

    def apt(*args, check=True):
        return run(["unshare", "-m", "sh", "-c",
                    'mount --bind "$0" /usr/sbin/policy-rc.d && exec "$@"', allow, *APT, *args],
                   check=check)
    return apt


@pytest.fixture(scope="module")
def debs(scratch):
    """Build every .deb of the checkout; lintian must report no error and no warning."""
    missing = [p for p in BUILD_DEPENDS
               if run(["dpkg-query", "-W", "-f=${Status}", p], check=False).stdout
               != "install ok installed"]
    if missing:
        run(["apt-get", "update", "-q"])
        run(APT + ["install", "--no-install-recommends", *missing])
    src = os.path.join(scratch, "src")
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    built = {}
    for tree in (src, os.path.join(src, "examples", "echo"),
                 os.path.join(src, "tests", "system", "echo-tick")):
        run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=tree)
        parent = os.path.dirname(tree)
        changes = [f for f in os.listdir(parent) if f.endswith(".changes")]
        lint = run(["lintian", "--fail-on", "error,warning",
                    *[os.path.join(parent, c) for c in changes]], check=False)
        assert lint.returncode == 0, f"lintian errors or warnings:\n{lint.stdout}{lint.stderr}"
        for name in os.listdir(parent):
            if name.endswith(".deb"):
                built[name.split("_")[0]] = os.path.join(parent, name)
    assert set(PACKAGES + [PLUGIN, TICK]) <= set(built), built
    return built


@pytest.fixture(scope="module")
def broker():
    """The local broker's vhost `/`, which the packaged config uses. The queues
    taskqueue declares there are deleted before (a queue left with other
    arguments would quarantine the services) and after the test."""
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    channel = connection.channel()
    for queue in QUEUES:
        channel.queue_delete(queue)
    yield connection
    channel = connection.channel()
    for queue in QUEUES:
        channel.queue_delete(queue)
    connection.close()


def consumers(connection, queue):
    channel = connection.channel()
    try:
        return channel.queue_declare(queue, passive=True).method.consumer_count
    except pika.exceptions.ChannelClosedByBroker:
        return 0
    finally:
        if channel.is_open:
            channel.close()


def pidfile(service):
    return f"/run/taskqueue/{service}.pid"


def supervisor_pid(service):
    try:
        with open(pidfile(service)) as f:
            return int(f.read().strip())
    except (FileNotFoundError, ValueError):
        return None


def children(pid):
    out = run(["ps", "--ppid", str(pid), "-o", "pid="], check=False).stdout
    return [int(p) for p in out.split()]


def on_this_host(*packages):
    """Those of `packages` dpkg has (installed, or their config files left): apt refuses
    to purge a package it cannot locate, and then purges none of the others either (a
    test's own purge of TICK leaves it unknown)."""
    return [package for package in packages
            if run(["dpkg-query", "-W", "-f=${db:Status-Status}", package],
                   check=False).stdout not in ("", "not-installed")]


def uid_of(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Uid:"))


@pytest.fixture(scope="module")
def installed(debs, apt_as_on_a_real_host, broker):
    """Install the packages; whatever happens, stop and purge everything afterwards."""
    yield apt_as_on_a_real_host("install", *[debs[p] for p in PACKAGES])
    for service in SERVICES:
        if os.path.exists(f"/etc/init.d/{service}"):
            run([f"/etc/init.d/{service}", "stop"], check=False)
    apt_as_on_a_real_host("purge", *on_this_host(NEW_PLUGIN, TICK, PLUGIN, *PACKAGES), check=False)


def test_installing_the_packages_starts_both_services_as_the_taskqueue_user(installed):
    # Given the packages just installed with apt: the services run, as init scripts report
    for service in SERVICES:
        wait_for(lambda: run([f"/etc/init.d/{service}", "status"], check=False).returncode == 0,
                 30, f"{service} running")
        pid = supervisor_pid(service)
        assert pid and alive(pid)
        # No group names another user: supervisor and children all run as `taskqueue`.
        uid = pwd.getpwnam("taskqueue").pw_uid
        assert uid_of(pid) == uid
        assert all(uid_of(child) == uid for child in children(pid))
    config = os.stat("/etc/taskqueue/config.ini")
    assert stat.S_IMODE(config.st_mode) == 0o640
    assert grp.getgrgid(config.st_gid).gr_name == "taskqueue"
    # Each supervisor's graveyard is in root's /run/taskqueue, the taskqueue user's alone
    # (not in the shared /tmp, where any user may plant a directory).
    graves = [name for name in os.listdir("/run/taskqueue") if name.startswith("taskqueue-graves-")]
    assert len(graves) >= 2, graves
    for name in graves:
        st = os.lstat(os.path.join("/run/taskqueue", name))
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (pwd.getpwnam("taskqueue").pw_uid, 0o700)


#: A password_file of root's alone, as a systemd credential or an admin would make it.
PASSWORD_FILE = "/etc/taskqueue/broker-password"


def use_root_only_password_file():
    """The packaged config with its password moved to PASSWORD_FILE (root's, 0600)."""
    with open(PASSWORD_FILE, "w") as f:
        f.write("guest\n")
    os.chmod(PASSWORD_FILE, 0o600)
    with open("/etc/taskqueue/config.ini") as f:
        lines = [line for line in f.read().splitlines()
                 if not line.strip().lower().startswith(("password:", "password ", "password="))]
    if "[amqp]" not in lines:
        lines += ["", "[amqp]"]
    lines.insert(lines.index("[amqp]") + 1, f"password_file: {PASSWORD_FILE}")
    with open("/etc/taskqueue/config.ini", "w") as f:
        f.write("\n".join(lines) + "\n")


def test_installing_a_plugin_deb_starts_its_worker_in_the_running_pool(
        installed, debs, apt_as_on_a_real_host, broker):
    # Given a pool that read a password_file of root's alone (0600) before it became
    # the user taskqueue (issue 20: every reload used to be refused then)
    use_root_only_password_file()
    run(["/etc/init.d/taskqueue-workerpool", "restart"])
    wait_for(lambda: supervisor_pid("taskqueue-workerpool"), 30, "the pool restarted")
    pool = supervisor_pid("taskqueue-workerpool")
    wait_for(lambda: uid_of(pool) == pwd.getpwnam("taskqueue").pw_uid, 30, "the pool as taskqueue")
    # When a plugin package is installed: the dpkg trigger reloads the pool (SIGHUP)
    apt_as_on_a_real_host("install", debs[PLUGIN])
    wait_for(lambda: consumers(broker, "worker_echo") == 1, 20, "the echo worker consuming")
    assert supervisor_pid("taskqueue-workerpool") == pool  # reloaded, not restarted


def test_submit_wait_gets_the_workitem_back_through_dispatcher_and_echo_worker(installed, broker):
    wait_for(lambda: consumers(broker, "worker_echo") == 1, 20, "the echo worker consuming")
    out = run(["/usr/bin/taskqueue", "submit", "--wait", "--timeout", "20", "echo",
               '{"hello": "world"}'])
    assert json.loads(out.stdout) == {"hello": "world"}


def test_status_shows_both_installed_services_and_no_problem(installed, broker):
    wait_for(lambda: consumers(broker, "worker_echo") == 1, 20, "the echo worker consuming")
    out = run(["/usr/bin/taskqueue", "status", "--json"], check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    view = json.loads(out.stdout)
    names = {answer["supervisor"]["name"] for answer in view["supervisors"]}
    assert names == {"taskqueue-dispatcher", "taskqueue-workerpool"}, names
    assert view["problems"] == []


def test_check_config_names_an_unparsable_line_in_one_line_and_exits_2(installed, scratch):
    path = os.path.join(scratch, "unparsable.ini")
    with open(path, "w") as f:
        f.write("[w]\nworkers 3\n")
    out = run(["/usr/bin/taskqueue", "check-config", "--config", path], check=False)
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == (f"taskqueue: {path}, line 2: cannot parse 'workers 3'; "
                          "expected 'option: value' or a [section] header\n")


def test_a_worker_killed_with_sigkill_is_replaced(installed, broker):
    pool = supervisor_pid("taskqueue-workerpool")
    wait_for(lambda: children(pool), 20, "a worker process")
    victim = children(pool)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: children(pool) and victim not in children(pool), 20, "a replacement")
    wait_for(lambda: consumers(broker, "worker_echo") == 1, 20, "the echo worker consuming again")
    out = run(["/usr/bin/taskqueue", "submit", "--wait", "--timeout", "20", "echo", "42"])
    assert out.stdout.strip() == "42"


def slot_time(slot_id):
    """Seconds since the epoch of a slot id (`2026-12-06T13:09:08Z`, its UTC time)."""
    return calendar.timegm(time.strptime(slot_id, "%Y-%m-%dT%H:%M:%SZ"))


def ticks_done(after):
    """The slots (seconds) of TICK_SCHEDULE, at or after `after`, whose task the echo
    worker reported done in the events stream: message ids sched:echo-tick:SLOT."""
    out = run(["/usr/bin/taskqueue", "events", "--type", "echo", "--since", "2m", "--json"],
              check=False)
    prefix = f"sched:{TICK_SCHEDULE}:"
    slots = {slot_time(event["task"][len(prefix):])
             for event in map(json.loads, out.stdout.splitlines())
             if event["event"] == "done" and event["task"].startswith(prefix)}
    return sorted(slot for slot in slots if slot >= after)


def tick_row():
    """TICK_SCHEDULE's row of `taskqueue schedules --json`, or None."""
    out = run(["/usr/bin/taskqueue", "schedules", "--json"])
    return next((row for row in json.loads(out.stdout)["schedules"]
                 if row["name"] == TICK_SCHEDULE), None)


def test_a_plugin_deb_with_a_schedule_has_it_fired_by_the_running_pool_until_purged(
        installed, debs, apt_as_on_a_real_host, broker):
    # Given the pool running with the echo worker (no [schedules] in its config)
    apt_as_on_a_real_host("install", debs[PLUGIN])
    wait_for(lambda: consumers(broker, "worker_echo") == 1, 20, "the echo worker consuming")
    pool = supervisor_pid("taskqueue-workerpool")
    # When a package that ships the schedule echo-tick (every 2s, type echo) is installed
    before = time.time()
    apt_as_on_a_real_host("install", debs[TICK])
    # Then the trigger reloads the pool, whose new scheduler child fires echo-tick, and
    # the echo worker does its tasks
    wait_for(lambda: ticks_done(after=before), 15, "a task of echo-tick done by the echo worker")
    assert supervisor_pid("taskqueue-workerpool") == pool   # reloaded, not restarted
    # And `taskqueue schedules` names the package, the lead held by the pool's scheduler
    # child, and a firing since the install
    # (its record follows the task's confirm, which may come after the task is done)
    row = wait_for(lambda: (found := tick_row()) and found["last"]
                   and slot_time(found["last"]) >= before and found, 10,
                   "a firing of echo-tick since the install in the schedules stream")
    assert (row["when"], row["type"], row["source"]) == \
        ("every 2s", "echo", "package taskqueue-echo-tick 0.1.0"), row
    assert row["lead"]["held"], row
    scheduler = int(row["lead"]["holder"].rsplit(" pid ", 1)[1])
    assert scheduler in children(pool), (row, children(pool))
    # When the package is purged
    apt_as_on_a_real_host("purge", TICK)
    # Then the pool reloads without its scheduler child, the lead is let go, and no slot
    # fires after the last one
    wait_for(lambda: not alive(scheduler), 20, "the scheduler child gone")
    assert supervisor_pid("taskqueue-workerpool") == pool
    row = wait_for(lambda: (found := tick_row()) and not found["lead"]["held"] and found, 10,
                   "the lead of echo-tick let go")
    assert row["source"].startswith("another pool"), row    # no longer this host's
    last = slot_time(row["last"])
    holds_for(lambda: slot_time(tick_row()["last"]) == last, 6, "no slot of echo-tick fired")
    assert max(ticks_done(after=before)) <= last


def test_a_plugin_new_plugin_wrote_is_served_by_the_running_pool_once_installed_until_purged(
        installed, apt_as_on_a_real_host, broker, scratch):
    # Given the .deb of the project `taskqueue new-plugin` writes, built as it stands and
    # lintian-clean, and the running pool
    deb = build_new_plugin_deb(os.path.join(scratch, "new-plugin"), NEW_TYPE)
    pool = wait_for(lambda: supervisor_pid("taskqueue-workerpool"), 30, "the pool running")
    before = set(children(pool))
    # When it is installed with apt
    apt_as_on_a_real_host("install", deb)
    # Then its trigger reloads the pool, which starts the new worker type's worker
    wait_for(lambda: consumers(broker, f"worker_{NEW_TYPE}") == 1, 20, f"a {NEW_TYPE} consumer")
    assert supervisor_pid("taskqueue-workerpool") == pool   # reloaded, not restarted
    started = set(children(pool)) - before
    assert started, (before, children(pool))
    # And it serves a task as the template's worker does: the words counted, replied
    out = run(["/usr/bin/taskqueue", "submit", "--wait", "--timeout", "20", NEW_TYPE,
               '{"text": "three small words"}'])
    assert json.loads(out.stdout) == {"words": 3}
    # When the package is purged: its worker stops, the pool goes on
    apt_as_on_a_real_host("purge", NEW_PLUGIN)
    wait_for(lambda: not any(alive(pid) for pid in started), 20, f"the {NEW_TYPE} worker gone")
    wait_for(lambda: consumers(broker, f"worker_{NEW_TYPE}") == 0, 20, f"no {NEW_TYPE} consumer")
    assert supervisor_pid("taskqueue-workerpool") == pool


def test_purging_everything_leaves_no_process_pidfile_or_config(installed, apt_as_on_a_real_host):
    pids = [supervisor_pid(service) for service in SERVICES]
    family = [p for pid in pids if pid for p in [pid, *children(pid)]]
    assert family
    apt_as_on_a_real_host("purge", *on_this_host(NEW_PLUGIN, TICK, PLUGIN, *PACKAGES))
    wait_for(lambda: not any(alive(pid) for pid in family), 60, "every taskqueue process gone")
    assert not os.path.exists("/etc/taskqueue")
    assert not any(os.path.exists(pidfile(service)) for service in SERVICES)
    assert not os.path.exists("/run/taskqueue")
    assert not any(os.path.exists(f"/etc/init.d/{service}") for service in SERVICES)


def unit_path(root, service):
    """Where the package put the unit: usr/lib/systemd/system since Debian 13's
    debhelper, lib/systemd/system before."""
    for directory in ("usr/lib/systemd/system", "lib/systemd/system"):
        path = os.path.join(root, directory, f"{service}.service")
        if os.path.exists(path):
            return path
    pytest.fail(f"{service}.service is in neither usr/lib/systemd/system nor lib/systemd/system")


#: Highest `systemd-analyze security` exposure (0 safe .. 10 unsafe) each unit may have:
#: the dispatcher gives up root and runs no plugin; the pool runs arbitrary plugin
#: code as the users the config names (see the units' comments). Both were 9.6.
EXPOSURE_LIMITS = {"taskqueue-dispatcher": 5.0, "taskqueue-workerpool": 8.0}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_units_are_hardened(debs, scratch):
    root = os.path.join(scratch, "units-security")
    for service in SERVICES:
        run(["dpkg-deb", "-x", debs[service], root])
        out = run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                   unit_path(root, service)], check=False)
        last = (out.stdout.strip().splitlines() or [""])[-1]
        assert "Overall exposure level" in last, out.stdout + out.stderr
        exposure = float(last.split(":")[1].split()[0])
        assert exposure <= EXPOSURE_LIMITS[service], f"{service}: {last}"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_units_verify_clean(debs, scratch):
    # Unpacked from the built packages, checked the way systemd would load them.
    root = os.path.join(scratch, "units")
    for service in SERVICES:
        run(["dpkg-deb", "-x", debs[service], root])
    units = [unit_path(root, service) for service in SERVICES]
    out = run(["systemd-analyze", "verify", "--man=no", *units], check=False)
    # verify resolves ExecStart and man pages on this host, where the packages
    # are purged by now: the man page is not looked up, the binary is excused.
    problems = [line for line in (out.stdout + out.stderr).splitlines()
                if line.strip() and "/usr/bin/taskqueue" not in line]
    assert not problems, problems


def test_the_taskqueue_package_ships_the_docs_man_pages_rules_and_dashboard(debs):
    # Given the built taskqueue package, as dpkg lists it
    listed = run(["dpkg-deb", "--contents", debs["taskqueue"]]).stdout
    paths = {line.split()[-1].lstrip(".") for line in listed.splitlines()}
    # Then every page of docs/ and the README are under /usr/share/doc/taskqueue
    # (debhelper compresses the larger ones), and both man pages are in place
    pages = ["README.md"] + [f"docs/{name}" for name in
                             sorted(os.listdir(os.path.join(REPO, "docs")))]
    for page in pages:
        shipped = f"/usr/share/doc/taskqueue/{page}"
        assert shipped in paths or shipped + ".gz" in paths, f"{page} not in {sorted(paths)}"
    assert {"/usr/share/man/man1/taskqueue.1.gz",
            "/usr/share/man/man5/taskqueue.conf.5.gz"} <= paths
    # And the alert rules and the Grafana dashboard, uncompressed, where the docs say
    assert {"/usr/share/taskqueue/taskqueue-alerts.yml",
            "/usr/share/taskqueue/taskqueue-dashboard.json"} <= paths
