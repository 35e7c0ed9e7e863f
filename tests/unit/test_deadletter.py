"""deadletter: the graveyard's death counts, task keys, dead-letter headers."""
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pika
import pytest

from taskqueue.broker.deadletters import dead_properties, task_key
from taskqueue.supervision import graveyard as graveyard_module
from taskqueue.supervision.graveyard import Graveyard, sweep_stale


def test_graveyard_counts_deaths_per_task_and_keeps_the_last_cause(tmp_path):
    graveyard = Graveyard(str(tmp_path))
    assert graveyard.deaths("m-1") == (0, None)
    graveyard.record("m-1", "w#0 pid 10: killed by SIGKILL")
    graveyard.record("m-1", "w#0 pid 11: exit 9")
    graveyard.record("m-2", "w#1 pid 12: killed by SIGABRT")
    assert graveyard.deaths("m-1") == (2, "w#0 pid 11: exit 9")
    assert graveyard.deaths("m-2") == (1, "w#1 pid 12: killed by SIGABRT")


def test_graveyard_forgets_a_task_once_told_and_counts_its_next_life_from_zero(tmp_path):
    graveyard = Graveyard(str(tmp_path))
    graveyard.record("m-1", "died")
    graveyard.record("m-2", "died")
    graveyard.forget("m-1")
    graveyard.forget("m-never-died")
    assert graveyard.deaths("m-1") == (0, None)
    assert graveyard.deaths("m-2") == (1, "died")
    graveyard.record("m-1", "died again")
    assert graveyard.deaths("m-1") == (1, "died again")


def test_graveyard_forgets_the_oldest_causes_beyond_its_size(tmp_path, monkeypatch):
    monkeypatch.setattr(graveyard_module, "GRAVEYARD_SIZE", 3)
    graveyard = Graveyard(str(tmp_path))
    for n in range(5):
        graveyard.record(f"m-{n}", "died")
    assert len(list(tmp_path.iterdir())) == 3
    assert graveyard.deaths("m-4") == (1, "died")


def test_graveyard_forgets_what_it_recorded_after_evictions_and_nothing_else(tmp_path, monkeypatch):
    # forget() skips the file system for keys this graveyard never wrote (every
    # task that did not kill a process): what it did write must still go.
    monkeypatch.setattr(graveyard_module, "GRAVEYARD_SIZE", 2)
    graveyard = Graveyard(str(tmp_path))
    for n in range(4):
        graveyard.record(f"m-{n}", "died")
    graveyard.forget("m-0")                 # evicted already: nothing to do
    graveyard.record("m-0", "died again")   # evicts m-2
    assert sorted(graveyard.deaths(f"m-{n}")[0] for n in range(4)) == [0, 0, 1, 1]
    for n in range(4):
        graveyard.forget(f"m-{n}")
    assert list(tmp_path.iterdir()) == []


def test_task_key_is_one_printable_word_from_the_message_id_or_the_body():
    assert task_key(pika.BasicProperties(message_id="a b\nc"), b"x") == "a?b?c"
    assert task_key(pika.BasicProperties(message_id="x" * 300), b"") == "x" * 200
    keyed = task_key(pika.BasicProperties(), b"body")
    assert keyed.startswith("sha1-") and keyed == task_key(pika.BasicProperties(), b"body")


def test_dead_properties_name_queue_and_details_as_taskqueue_headers():
    props = dead_properties(pika.BasicProperties(headers={"x-delivery-count": 3, "k": "v"}),
                            "why", queue="worker_t", worker_type="t", exit="killed")
    assert props.headers["k"] == "v" and "x-delivery-count" not in props.headers
    assert (props.headers["x-taskqueue-reason"], props.headers["x-taskqueue-queue"],
            props.headers["x-taskqueue-worker-type"], props.headers["x-taskqueue-exit"]) == (
        "why", "worker_t", "t", "killed")
    props.encode()


def test_a_graveyard_nobody_holds_is_swept_and_a_held_one_kept(tmp_path):
    held = Graveyard.create(str(tmp_path))
    stale = tmp_path / "taskqueue-graves-stale"
    stale.mkdir()
    (stale / "a-cause").write_text("1\ndied")
    other = tmp_path / "not-a-graveyard"
    other.mkdir()
    # An earlier version's (no lock: it may be running, as during an upgrade) is kept
    earlier = tmp_path / "taskqueue-graveyard-abc123"
    earlier.mkdir()
    assert sweep_stale(str(tmp_path)) == [str(stale)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([os.path.basename(held.path),
                                                                 "not-a-graveyard", earlier.name])
    held.remove()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([earlier.name, "not-a-graveyard"])


def test_a_new_graveyard_sweeps_the_stale_ones_and_only_its_user_may_read_it(tmp_path):
    (tmp_path / "taskqueue-graves-old").mkdir()
    graveyard = Graveyard.create(str(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == [os.path.basename(graveyard.path)]
    assert os.stat(graveyard.path).st_mode & 0o777 == 0o700
    graveyard.record("m-1", "died")
    assert [os.stat(p).st_mode & 0o777 for p in Path(graveyard.path).iterdir()] == [0o600]
    # held: a second supervisor starting now leaves it alone
    second = Graveyard.create(str(tmp_path))
    assert second.path != graveyard.path and os.path.isdir(graveyard.path)
    second.remove()
    graveyard.remove()


def plant_deep_tree(top, depth):
    """`top`/d/d/d... `depth` levels deep, made without recursion."""
    os.mkdir(top)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


@pytest.fixture
def removes_deep_trees(tmp_path):
    """shutil.rmtree recurses (RecursionError on Python 3.11), pytest's cleanup too:
    GNU rm walks a deep tree without recursing."""
    yield
    subprocess.run(["rm", "-rf", str(tmp_path)], check=True)


def test_a_planted_deep_tree_or_link_never_stops_the_sweep(tmp_path, removes_deep_trees):
    # Given, among the graveyards, a 3 000-deep tree of this user's, one of another
    # user's, a link to a directory outside, and a file
    plant_deep_tree(str(tmp_path / "taskqueue-graves-deep"), 3000)
    theirs = tmp_path / "taskqueue-graves-theirs"
    theirs.mkdir()
    (theirs / "cause").write_text("1\nx")
    if os.geteuid() == 0:
        os.chown(theirs, 65534, 65534)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    (tmp_path / "taskqueue-graves-link").symlink_to(outside)
    (tmp_path / "taskqueue-graves-file").write_text("x")
    os.mkfifo(tmp_path / "taskqueue-graves-fifo")       # opening it must never block
    stale = tmp_path / "taskqueue-graves-stale"
    stale.mkdir()
    (stale / "cause").write_text("1\nx")
    # When a supervisor starts there
    graveyard = Graveyard.create(str(tmp_path))
    # Then it started; the stale graveyard went, nothing else was followed or removed
    names = {p.name for p in tmp_path.iterdir()}
    assert "taskqueue-graves-stale" not in names
    assert {"taskqueue-graves-deep", "taskqueue-graves-link", "taskqueue-graves-file",
            "taskqueue-graves-fifo", "outside"} <= names
    assert (outside / "precious").read_text() == "keep me"
    if os.geteuid() == 0:
        assert (theirs / "cause").exists()   # another user's: never ours to remove
    graveyard.remove()
    assert not os.path.exists(graveyard.path)


def test_a_shared_graveyard_is_not_listable_and_its_names_cannot_be_guessed(tmp_path):
    # A root supervisor whose children run as other users: they must read it, nobody
    # else may find a task in it.
    graveyard = Graveyard.create(str(tmp_path), shared=True)
    graveyard.record("m-known-id", "w#0 pid 1: killed by SIGKILL")
    assert os.stat(graveyard.path).st_mode & 0o777 == 0o711
    [name] = os.listdir(graveyard.path)
    assert os.stat(os.path.join(graveyard.path, name)).st_mode & 0o777 == 0o644
    assert name != hashlib.sha1(b"m-known-id").hexdigest()
    other = Graveyard(graveyard.path)      # another supervisor's secret: another name
    assert other.deaths("m-known-id") == (0, None)
    assert graveyard.deaths("m-known-id") == (1, "w#0 pid 1: killed by SIGKILL")
    graveyard.remove()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_a_child_of_another_user_reads_a_shared_graveyard_after_the_fork():
    top = tempfile.mkdtemp(prefix="tq-graves-")   # pytest's tmp is root's alone (0700)
    os.chmod(top, 0o755)
    graveyard = Graveyard.create(top, shared=True)
    graveyard.record("m-1", "died")
    assert _as_nobody(lambda: 0 if graveyard.deaths("m-1") == (1, "died") else 3) == 0
    graveyard.remove()
    os.rmdir(top)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_a_child_that_execs_as_another_user_reads_the_graveyard_through_its_handoff():
    # A user-switching child execs a fresh interpreter (childexec.py): the secret that
    # names the files is not in its memory any more unless the handoff carries it.
    top = tempfile.mkdtemp(prefix="tq-graves-")
    os.chmod(top, 0o755)
    graveyard = Graveyard.create(top, shared=True)
    graveyard.record("m-1", "died")
    path, secret = graveyard.handoff()
    script = ("import sys; from taskqueue.supervision.graveyard import Graveyard; "
              "g = Graveyard.adopt((sys.argv[1], bytes.fromhex(sys.argv[2]))); "
              "h = Graveyard(sys.argv[1]); "
              "sys.exit(0 if g.deaths('m-1') == (1, 'died') and h.deaths('m-1') == (0, None)"
              " else 3)")
    assert _as_nobody(lambda: os.execv(
        sys.executable, [sys.executable, "-c", script, path, secret.hex()])) == 0
    graveyard.remove()
    os.rmdir(top)


def _as_nobody(body):
    """The wait status of a forked child that became nobody and exited with body()."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            code = body()
        finally:
            os._exit(code)
    return os.waitpid(pid, 0)[1]
