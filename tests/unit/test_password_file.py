"""[amqp] password_file, and the refusal of a config holding a secret that every user can read."""
import os
import shutil
import tempfile

import pytest

from taskqueue import redact
from taskqueue.errors import ConfigError, TaskqueueError
from taskqueue.host import config


@pytest.fixture(autouse=True)
def forget_secrets(monkeypatch):
    """The passwords these tests load are remembered process-wide: only for the test."""
    monkeypatch.setattr(redact, "_secrets", set())


@pytest.fixture
def write(tmp_path):
    def write(text, name="config.ini", mode=0o640):
        path = tmp_path / name
        path.write_text(text)
        os.chmod(path, mode)
        return str(path)
    return write


def load(path):
    return config.load(path, set())


def error_of(path):
    with pytest.raises(ConfigError) as info:
        config.load(path, set())
    return str(info.value)


def test_password_file_gives_the_password_without_its_newline(write):
    secret = write("pw-from-file-1\n", name="secret")
    cfg = load(write(f"[amqp]\nuser: tq\npassword_file: {secret}\n"))
    assert (cfg.amqp.user, cfg.amqp.password) == ("tq", "pw-from-file-1")
    assert "pw-from-file-1" in redact._secrets    # hidden in every line from now on
    assert cfg.secret_options == ()               # the file only names another file


def test_password_file_gives_the_password_of_the_url_user(write):
    secret = write("p@ss/w0rd\n", name="secret")
    cfg = load(write(f"[amqp]\nurl: amqp://tq@a:5672/v, amqp://tq@b/v\npassword_file: {secret}\n"))
    assert cfg.amqp.hosts == ("amqp://tq:p%40ss%2Fw0rd@a:5672/v", "amqp://tq:p%40ss%2Fw0rd@b/v")
    assert "p%40ss" not in repr(cfg.amqp) and "p@ss" not in repr(cfg.amqp)


def test_a_url_password_is_hidden_in_free_text_too(write):
    load(write("[amqp]\nurl: amqp://tq:Url%2Fpw-5@a/v\n"))
    assert redact.redact("quoted Url%2Fpw-5, decoded Url/pw-5") == "quoted ***, decoded ***"


@pytest.mark.parametrize("url, expected", [
    ("amqp://tq:other@a/", "expected no password in the URL alongside password_file"),
    ("amqp://a/", "expected a user in the URL"),
])
def test_password_file_with_a_url_that_cannot_take_it(write, url, expected):
    secret = write("pw-from-file-2\n", name="secret")
    message = error_of(write(f"[amqp]\nurl: {url}\npassword_file: {secret}\n"))
    assert "[amqp] url = " in message and expected in message
    assert "other" not in message


def test_password_and_password_file_together_is_an_error_naming_both(write):
    secret = write("pw-from-file-3\n", name="secret")
    path = write(f"[amqp]\npassword: x\npassword_file: {secret}\n")
    assert error_of(path) == (f"{path}: [amqp] password_file = {secret!r}: "
                              "expected either password or password_file, not both")


@pytest.mark.parametrize("content, mode, expected", [
    (None, 0o600, "cannot read it: No such file or directory"),
    ("", 0o600, "the file is empty; expected the password on its first line"),
    ("\n", 0o600, "the file is empty; expected the password on its first line"),
    ("one\ntwo\n", 0o600, "expected the password alone on one line, found 2 lines"),
])
def test_password_file_problems_name_file_section_and_option(write, tmp_path, content, mode,
                                                             expected):
    secret = str(tmp_path / "secret")
    if content is not None:
        secret = write(content, name="secret", mode=mode)
    path = write(f"[amqp]\npassword_file: {secret}\n")
    assert error_of(path) == f"{path}: [amqp] password_file = {secret!r}: {expected}"


def test_password_file_must_be_absolute(write):
    path = write("[amqp]\npassword_file: secret\n")
    assert error_of(path) == (f"{path}: [amqp] password_file = 'secret': "
                              "expected the absolute path of a file")


@pytest.mark.skipif(os.getuid() == 0, reason="root reads any file")
def test_unreadable_password_file(write):
    secret = write("pw\n", name="secret", mode=0o000)
    assert "cannot read it: Permission denied" in error_of(write(f"[amqp]\npassword_file: {secret}\n"))


@pytest.mark.parametrize("amqp, held", [
    ("password: s3cret-9\n", ("[amqp] password",)),
    ("password: guest\n", ("[amqp] password",)),
    ("url: amqp://tq:s3cret-9@broker/\n", ("[amqp] url",)),
    ("url: amqp://tq@broker/\n", ()),
    ("host: broker\n", ()),             # the default guest/guest is no secret of the file
])
def test_what_a_file_holds(write, amqp, held):
    assert load(write(f"[amqp]\n{amqp}")).secret_options == held


@pytest.mark.parametrize("mode, refused", [(0o644, True), (0o604, True), (0o640, False),
                                           (0o600, False), (0o660, False)])
def test_a_secret_readable_by_every_user_is_refused(write, mode, refused):
    path = write("[amqp]\npassword: s3cret-9\n", mode=mode)
    problem = config.exposed_secret(load(path))
    if not refused:
        assert problem is None
        return
    assert problem == (f"{path}: holds [amqp] password and is readable by every user "
                       f"(mode {mode:04o}); refusing to use it: chmod 640 {path} (group taskqueue), "
                       "or keep the password in [amqp] password_file")


def test_a_world_readable_file_without_secret_is_fine(write):
    assert config.exposed_secret(load(write("[amqp]\nhost: broker\n", mode=0o644))) is None


def test_settings_repr_and_errors_show_no_password(write):
    cfg = load(write("[amqp]\nurl: amqp://tq:Repr-s3cret@broker/\n"))
    assert "Repr-s3cret" not in repr(cfg)
    assert "Repr-s3cret" not in repr(config.AmqpSettings(password="Repr-s3cret"))
    error = TaskqueueError("cannot connect to amqp://tq:Repr-s3cret@broker/")
    assert str(error) == "cannot connect to amqp://tq:***@broker/"


# -- the secret files the config names: exposure, who may change them ------------

@pytest.mark.parametrize("mode, refused", [(0o644, True), (0o604, True), (0o640, False),
                                           (0o600, False)])
def test_a_password_file_readable_by_every_user_is_refused_naming_it(write, mode, refused):
    secret = write("pw-exposed-1\n", name="secret", mode=mode)
    path = write(f"[amqp]\npassword_file: {secret}\n")
    problem = config.exposed_secret(load(path))
    if not refused:
        assert problem is None
        return
    assert problem == (f"{secret}: the [amqp] password_file of {path} is readable by every "
                       f"user (mode {mode:04o}); refusing to use it: chmod 600 {secret} "
                       "(or 640, group taskqueue)")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
@pytest.mark.parametrize("culprit", ["config", "password_file", "directory"])
def test_a_root_supervisor_refuses_files_another_user_can_change(write, tmp_path, culprit):
    os.chmod(tmp_path, 0o755)
    secret = write("pw-owned-2\n", name="secret", mode=0o600)
    path = write(f"[amqp]\npassword_file: {secret}\n")
    assert config.unsafe_files(load(path), as_root=True) is None
    if culprit == "config":
        os.chown(path, 65534, -1)
    elif culprit == "password_file":
        os.chmod(secret, 0o620)
        os.chown(secret, -1, 65534)
    else:
        os.chmod(tmp_path, 0o777)
    problem = config.unsafe_files(load(path), as_root=True)
    # (a directory holding both: each is named, the config first)
    named = secret if culprit == "password_file" else path
    what = f"the [amqp] password_file of {path}" if culprit == "password_file" else "the config"
    assert problem.startswith(f"{named}: refusing to use {what} as root: ")
    assert {"config": "belongs to user nobody (uid 65534)", "password_file": "is writable by group",
            "directory": "could put another file in its place"}[culprit] in problem
    # A process that never was root trusts its own files as it always did.
    assert config.unsafe_files(load(path), as_root=False) is None


# -- a reload after the privilege drop keeps what the secret files gave at start ----

def in_child_as_nobody(work):
    """Run work() in a forked child that became nobody; return its exit status code."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            code = work()
        except BaseException as exc:
            print("child failed:", repr(exc))
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.fixture
def public_write():
    """write(), in a directory every user may search (pytest's tmp is root's alone)."""
    top = tempfile.mkdtemp(prefix="tq-kept-")
    os.chmod(top, 0o755)

    def write(text, name, mode):
        path = os.path.join(top, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path
    yield write
    shutil.rmtree(top)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_after_the_drop_a_reload_keeps_the_password_read_at_start_and_says_so_once(
        public_write, caplog):
    secret = public_write("pw-kept-3\n", "secret", 0o600)      # root's alone
    other = public_write("pw-new-4\n", "other-secret", 0o600)
    path = public_write(f"[amqp]\npassword_file: {secret}\n", "config.ini", 0o644)
    # The same config, edited to name another file.
    edited = public_write(f"[amqp]\npassword_file: {other}\n", "edited.ini", 0o644)
    assert load(path).amqp.password == "pw-kept-3"               # at start, as root

    def reload_as_nobody():
        kept = [load(path).amqp.password for _ in range(2)]
        told = [r.getMessage() for r in caplog.records
                if "keeping what it held at start" in r.getMessage()]
        message = ""
        try:
            load(edited)
        except ConfigError as exc:
            message = str(exc)
        print(kept, told, message)
        return 0 if (kept == ["pw-kept-3"] * 2 and len(told) == 1 and secret in told[0]
                     and "cannot read it: Permission denied (taskqueue gave up root" in message
                     and other in message) else 1
    caplog.set_level("WARNING", logger="taskqueue")
    assert in_child_as_nobody(reload_as_nobody) == 0


@pytest.mark.parametrize("option, value", [
    ("password_file", "/\x00"), ("password_file", "/etc/\x00x")])
def test_a_path_with_a_nul_is_refused_naming_the_option_not_a_traceback(tmp_path, option, value):
    # (hypothesis found it: open() raises ValueError, not OSError, for a NUL)
    path = tmp_path / "c.ini"
    path.write_text(f"[amqp]\n{option}: {value}\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=rf"\[amqp\] {option} = .*: expected the absolute path"):
        config.load(str(path), {}, check_users=False)


def test_a_tls_file_with_a_nul_is_refused_naming_the_option(tmp_path):
    path = tmp_path / "c.ini"
    path.write_text("[amqp]\ntls: yes\ntls_ca_file: /etc/ssl/\x00ca.pem\n")
    with pytest.raises(ConfigError, match=r"\[amqp\] tls_ca_file = .*: expected a path "
                                          r"without NUL characters"):
        config.load(str(path), {}, check_users=False)
