"""Privileges and files (issue 20, items 5 to 7): the secrets a root supervisor read at
start stay usable after it gives up root; files a user other than root could change
are refused; logs, status sockets and graveyards never follow what someone planted.

The supervisor runs as root, as the packages start it, with `--user` as they give it.
"""
import os
import pwd
import signal
import stat
import subprocess

import pytest

from support import TASKQUEUE, recorder_config, system_users, wait_for

#: What `--user` names here (the packages use `taskqueue`).
DAEMON_USER = "tqtest-daemon"
NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs a root supervisor")


@pytest.fixture(scope="module")
def daemon_user():
    with system_users(users=(DAEMON_USER,)):
        yield DAEMON_USER


def write(path, text, mode):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def consumers(broker, worker_type="recorder"):
    return broker.counts(f"worker_{worker_type}")[1]


def check_config(path):
    return subprocess.run([TASKQUEUE, "check-config", "--config", path], capture_output=True,
                          text=True, timeout=60)


def test_a_reload_after_the_drop_keeps_the_root_only_password_file_read_at_start(
        daemon_user, broker, start_pool, records, workdir):
    # Given a pool started as root with --user (the packaged units) and a password_file
    # of root's alone, mode 0600
    secret = write(os.path.join(workdir, "broker-password"), "guest\n", 0o600)
    pool = start_pool(recorder_config(records), command="workerpool",
                      extra_args=["--user", daemon_user], amqp_extra=f"password_file: {secret}\n")
    wait_for(lambda: consumers(broker) == 1, 20, "1 consumer")
    pool.wait_log(f"running as user {daemon_user}")
    # When the config changes (a plugin installed: the dpkg trigger's reload) and it reloads
    with open(pool.config_path) as f:
        text = f.read()
    with open(pool.config_path, "w") as f:
        f.write(text.replace("[recorder]\nworkers: 1\n", "[recorder]\nworkers: 2\n"))
    os.kill(pool.pid, signal.SIGHUP)
    # Then the reload applies, with the password read at start, said once in the log
    pool.wait_log(r"reload: 0 added, 1 changed, 0 removed", timeout=20)
    wait_for(lambda: consumers(broker) == 2, 20, "2 consumers after the reload")
    os.kill(pool.pid, signal.SIGHUP)
    pool.wait_log(r"reload: 0 added, 0 changed, 0 removed", timeout=20)
    told = pool.wait_log(rf"WARNING: .*password_file {secret}: cannot read it as uid \d+ "
                         r"\(taskqueue gave up root after it started\); keeping what it held "
                         "at start")
    assert len(told) == 1 and "reload refused" not in pool.log()
    # And a reload naming another file it cannot read is refused, saying why
    other = write(os.path.join(workdir, "other-password"), "guest\n", 0o600)
    with open(pool.config_path) as f:
        text = f.read()
    with open(pool.config_path, "w") as f:
        f.write(text.replace(secret, other))
    os.kill(pool.pid, signal.SIGHUP)
    pool.wait_log(rf"reload refused, the running configuration stays: .*\[amqp\] password_file "
                  rf"= '{other}': cannot read it: Permission denied \(taskqueue gave up root")
    assert consumers(broker) == 2
    assert pool.stop() == 0


def plant_deep_tree(top, depth, uid):
    """`top`/d/d/... `depth` levels deep, every level owned by `uid`, made without recursion."""
    os.mkdir(top)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    os.fchown(fd, uid, uid)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.fchown(inner, uid, uid)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)


def test_a_tree_planted_among_the_graveyards_never_stops_a_start_and_the_graveyard_is_private(
        broker, start_pool, records, workdir, status_dir):
    # Given a 3 000-deep directory any local user could plant in the shared temp directory
    tmp = os.path.join(workdir, "tmp")
    os.mkdir(tmp)
    os.chmod(tmp, 0o1777)
    planted = os.path.join(tmp, "taskqueue-graves-planted")
    try:
        plant_deep_tree(planted, 3000, NOBODY)
        # When a root supervisor starts
        pool = start_pool(recorder_config(records), env={"TMPDIR": tmp})
        wait_for(lambda: consumers(broker) == 1, 20,
                 lambda: f"1 consumer\n--- log:\n{pool.log()[-2000:]}")
        # Then it runs; the planted tree is untouched; its graveyard is in the status
        # directory (root's), not listable by others, not in the shared temp directory
        assert os.path.isdir(os.path.join(planted, "d", "d"))
        assert os.listdir(tmp) == ["taskqueue-graves-planted"]
        [graveyard] = [n for n in os.listdir(status_dir) if n.startswith("taskqueue-graves-")]
        st = os.lstat(os.path.join(status_dir, graveyard))
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o711)
        assert pool.stop() == 0
        assert not any(n.startswith("taskqueue-graves-") for n in os.listdir(status_dir))
    finally:
        # shutil.rmtree (the workdir fixture's) recurses: GNU rm does not.
        subprocess.run(["rm", "-rf", planted], check=True)


def test_a_dropped_supervisors_graveyard_is_its_users_alone(
        daemon_user, broker, start_pool, records, status_dir):
    pool = start_pool(recorder_config(records), command="workerpool",
                      extra_args=["--user", daemon_user])
    wait_for(lambda: consumers(broker) == 1, 20, "1 consumer")
    [graveyard] = [n for n in os.listdir(status_dir) if n.startswith("taskqueue-graves-")]
    st = os.lstat(os.path.join(status_dir, graveyard))
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (pwd.getpwnam(daemon_user).pw_uid, 0o700)
    assert pool.stop() == 0


def test_a_log_path_that_is_a_planted_link_is_refused_and_its_target_untouched(
        broker, start_pool, records, workdir):
    target = write(os.path.join(workdir, "precious"), "untouched\n", 0o644)
    link = os.path.join(workdir, "taskqueue.log")
    os.symlink(target, link)
    pool = start_pool(recorder_config(records) + f"\n[logging]\ntarget: file\npath: {link}\n",
                      log=None)
    assert pool.process.wait(30) == 2
    assert (f"[logging] path = '{link}': cannot open it for appending: {link} is a symbolic "
            "link; taskqueue never follows one") in pool.log()
    with open(target) as f:
        assert f.read() == "untouched\n"


def test_a_log_file_another_user_made_is_refused(broker, start_pool, records, workdir):
    planted = write(os.path.join(workdir, "taskqueue.log"), "", 0o666)
    os.chown(planted, NOBODY, NOBODY)
    pool = start_pool(recorder_config(records) + f"\n[logging]\ntarget: file\npath: {planted}\n",
                      log=None)
    assert pool.process.wait(30) == 2
    assert f"{planted} belongs to user nobody (uid 65534)" in pool.log()


def test_a_status_dir_that_is_a_link_gets_no_socket(broker, start_pool, records, workdir):
    elsewhere = os.path.join(workdir, "elsewhere")
    os.mkdir(elsewhere)
    link = os.path.join(workdir, "run-link")
    os.symlink(elsewhere, link)
    pool = start_pool(recorder_config(records) + f"\n[supervisor]\nstatus_dir: {link}\n",
                      own_status_dir=False)
    wait_for(lambda: consumers(broker) == 1, 20, "1 consumer")
    pool.wait_log(rf"status socket {link}/taskqueue-run.sock: {link} is a symbolic link")
    assert not any(n.endswith(".sock") for n in os.listdir(elsewhere))
    assert pool.stop() == 0


def test_check_config_refuses_a_world_readable_password_file_or_key(workdir):
    secret = write(os.path.join(workdir, "pw"), "s3cret-exposed\n", 0o644)
    path = write(os.path.join(workdir, "c.ini"), f"[amqp]\npassword_file: {secret}\n", 0o640)
    out = check_config(path)
    assert out.returncode == 2, out
    assert (f"{secret}: the [amqp] password_file of {path} is readable by every user (mode "
            "0644); refusing to use it") in out.stderr
    os.chmod(secret, 0o600)
    assert check_config(path).returncode == 0


@pytest.mark.parametrize("culprit", ["config", "password_file", "directory"])
def test_a_root_supervisor_and_check_config_refuse_files_a_user_could_change(
        records, workdir, culprit):
    top = os.path.join(workdir, "etc")
    os.mkdir(top, 0o755)
    secret = write(os.path.join(top, "pw"), "guest\n", 0o600)
    # (a broker port nobody listens on, a status_dir of the test's: on fe425d5, which
    # starts, the daemon touches nothing of the host's)
    path = write(os.path.join(top, "config.ini"),
                 f"{recorder_config(records)}\n[amqp]\nhost: 127.0.0.1\nport: 1\n"
                 f"password_file: {secret}\n\n[supervisor]\nstatus_dir: {workdir}/run\n", 0o640)
    assert check_config(path).returncode == 0
    named = {"config": path, "password_file": secret, "directory": top}[culprit]
    if culprit == "directory":
        os.chown(top, NOBODY, NOBODY)
    else:
        os.chown(named, NOBODY, NOBODY)
    out = check_config(path)
    assert out.returncode == 2
    assert "belongs to user nobody (uid 65534)" in out.stderr and named in out.stderr
    assert "refusing to use" in out.stderr
    # The daemon refuses it the same way (exit 2: a bad config).
    daemon = subprocess.run([TASKQUEUE, "workerpool", "--config", path, "--log", "stderr"],
                            capture_output=True, text=True, timeout=20)
    assert daemon.returncode == 2 and "belongs to user nobody (uid 65534)" in daemon.stderr
