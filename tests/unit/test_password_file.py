"""[amqp] password_file, and the refusal of a config holding a secret that every user can read."""
import os

import pytest

from taskqueue import config, redact
from taskqueue.errors import ConfigError, TaskqueueError


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
