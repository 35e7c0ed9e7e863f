"""filetrust: what a root supervisor may trust, and files it opens without following links.

Real files, real owners (chown to nobody needs root: those cases skip otherwise).
"""
import os

import pytest

from taskqueue.host import filetrust

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


@pytest.fixture
def base(tmp_path):
    """A directory of root's, 0755, whose ancestors are root's (pytest's tmp is)."""
    os.chmod(tmp_path, 0o755)
    return tmp_path


def test_a_file_only_root_can_change_is_trusted(base):
    path = base / "config.ini"
    path.write_text("x")
    os.chmod(path, 0o640)
    assert filetrust.writable_by_others(str(path)) is None


@needs_root
@pytest.mark.parametrize("setup, culprit, words", [
    (lambda p: os.chown(p, NOBODY, -1), "file", "belongs to user nobody (uid 65534)"),
    (lambda p: os.chmod(p, 0o666), "file", "is writable by every user (mode 0666)"),
    (lambda p: (os.chown(p, -1, NOBODY), os.chmod(p, 0o660)), "file", "is writable by group"),
    (lambda p: os.chown(p.parent, NOBODY, -1), "dir", "belongs to user nobody"),
    (lambda p: os.chmod(p.parent, 0o777), "dir", "could put another file in its place"),
])
def test_a_file_a_user_could_change_is_named_with_the_fix(base, setup, culprit, words):
    sub = base / "etc"
    sub.mkdir()
    path = sub / "config.ini"
    path.write_text("x")
    os.chmod(path, 0o640)
    setup(path)
    problem = filetrust.writable_by_others(str(path))
    assert problem is not None and words in problem
    if culprit == "dir":
        assert problem.startswith(f"{sub} (directory on the way to {path})")
        assert f" {sub}" in problem.split(";")[-1]        # the fix names the directory
    else:
        assert problem.startswith(str(path))


def test_a_root_file_in_a_sticky_directory_is_trusted_as_in_tmp(base):
    sticky = base / "tmp"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    path = sticky / "config.ini"
    path.write_text("x")
    assert filetrust.writable_by_others(str(path)) is None


@needs_root
def test_links_are_followed_and_each_one_checked(base):
    real = base / "real.ini"
    real.write_text("x")
    users = base / "users"
    users.mkdir()
    os.chown(users, NOBODY, -1)
    # A link of root's to a file of root's: fine.
    (base / "link.ini").symlink_to(real)
    assert filetrust.writable_by_others(str(base / "link.ini")) is None
    # A link in a directory a user owns: that user could point it at /etc/shadow.
    (users / "link.ini").symlink_to(real)
    assert "belongs to user nobody" in filetrust.writable_by_others(str(users / "link.ini"))
    # A link of root's through which the path reaches a user's directory.
    (base / "to-users").symlink_to(users)
    (users / "plain.ini").write_text("x")
    problem = filetrust.writable_by_others(str(base / "to-users" / "plain.ini"))
    assert problem.startswith(f"{users} (directory on the way to")
    # A loop ends, named.
    (base / "loop").symlink_to(base / "loop")
    assert "too many links" in filetrust.writable_by_others(str(base / "loop" / "x"))


def test_open_append_never_follows_a_link(base):
    target = base / "target"
    target.write_text("untouched")
    (base / "taskqueue.log").symlink_to(target)
    with pytest.raises(OSError) as info:
        filetrust.open_append(str(base / "taskqueue.log"), 0o640)
    assert "is a symbolic link" in info.value.strerror
    assert target.read_text() == "untouched"


@needs_root
def test_open_append_refuses_a_file_another_user_made(base):
    planted = base / "taskqueue.log"
    planted.write_text("")
    os.chown(planted, NOBODY, NOBODY)
    with pytest.raises(OSError) as info:
        filetrust.open_append(str(planted), 0o640)
    assert "belongs to user nobody (uid 65534)" in info.value.strerror
    assert "someone else made it" in info.value.strerror


def test_open_append_creates_with_its_mode(base):
    fd = filetrust.open_append(str(base / "new.log"), 0o640)
    os.close(fd)
    assert os.stat(base / "new.log").st_mode & 0o777 == 0o640 & ~current_umask()


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_safe_directory_refuses_a_link_and_a_directory_others_may_write(base):
    (base / "elsewhere").mkdir()
    (base / "run").symlink_to(base / "elsewhere")
    with pytest.raises(OSError) as info:
        filetrust.safe_directory(str(base / "run"))
    assert "is a symbolic link" in info.value.strerror
    (base / "open").mkdir()
    os.chmod(base / "open", 0o777)
    with pytest.raises(OSError) as info:
        filetrust.safe_directory(str(base / "open"))
    assert "writable by every user (mode 0777)" in info.value.strerror
    filetrust.safe_directory(str(base / "made" / "here"))
    assert os.path.isdir(base / "made" / "here")
