"""`command:` in a worker type's section: the type is a program (runtime/commandworker.py).
Every bad value is an error naming file, section and option."""
import os
import stat

import pytest

from taskqueue.errors import ConfigError
from taskqueue.host import config


@pytest.fixture
def program(tmp_path):
    """An executable script in tmp_path."""
    path = tmp_path / "task.sh"
    path.write_text("#!/bin/sh\ncat\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def write(tmp_path):
    def write(text):
        path = tmp_path / "config.ini"
        path.write_text(text)
        return str(path)
    return write


def error_of(path, types=()):
    with pytest.raises(ConfigError) as info:
        config.load(path, types, check_users=False)
    return str(info.value)


def test_a_section_with_command_is_a_worker_type_of_its_own(write, program):
    path = write(f"[DEFAULT]\nworkers: 1\n\n[resize]\ncommand: {program} --size 'a b'\n"
                 "workers: 2\ntask_timeout: 30\nmax_retries: 2\n")
    cfg = config.load(path, {"worker1"}, check_users=False)
    groups = {group.worker_type: group for group in cfg.groups}
    assert set(groups) == {"resize", "worker1"}
    resize = groups["resize"]
    assert resize.command == (program, "--size", "a b")
    assert (resize.processes, resize.task_timeout, resize.retry.max_retries) == (2, 30.0, 2)
    assert resize.queue == "worker_resize"
    assert groups["worker1"].command is None
    assert cfg.warnings == ()    # not "names no installed worker plugin"


def test_subgroups_of_a_command_type_run_its_command_as_their_users(write, program):
    path = write(f"[resize]\ncommand: {program}\nworkers: a, b\n\n[resize_a]\nuser: nobody\n\n"
                 "[resize_b]\nworkers: 3\n")
    groups = config.load(path, (), check_users=False).groups
    assert [(g.subgroup, g.user, g.processes, g.command) for g in groups] == [
        ("a", "nobody", 1, (program,)), ("b", None, 3, (program,))]


@pytest.mark.parametrize("value, expected", [
    ("task.sh", "'task.sh' is not an absolute path; expected the absolute path of the program"),
    ("/nonexistent/tq-task", "/nonexistent/tq-task: No such file or directory; expected an "
                             "executable file"),
    ("", "expected the absolute path of a program, then its arguments"),
    ("   ", "expected the absolute path of a program, then its arguments"),
    ("/bin/sh -c 'unclosed", "expected a program and its arguments, quoted as in a shell "
                             "(No closing quotation)"),
    ("/bin/echo hi | /bin/cat", "'|' is shell syntax, and no shell runs the command"),
    ("/bin/echo a ; /bin/rm -rf /", "';' is shell syntax"),
    ("/bin/echo $(id)", "'$(id)' is shell syntax"),
    ("/bin/echo `id`", "'`id`' is shell syntax"),
    ("/bin/echo x > /etc/passwd", "'>' is shell syntax"),
    ("/tmp", "/tmp is not a regular file; expected an executable file"),
])
def test_a_bad_command_is_an_error_naming_file_section_and_option(write, value, expected):
    path = write(f"[resize]\ncommand: {value}\n")
    message = error_of(path)
    assert message.startswith(f"{path}: [resize] command = {value.strip()!r}: "), message
    assert expected in message


def test_a_command_that_is_not_executable_is_an_error(write, program):
    os.chmod(program, 0o644)
    message = error_of(write(f"[resize]\ncommand: {program}\n"))
    assert f"[resize] command = {program!r}: {program} is not executable (mode 0644); " \
           f"expected an executable file (chmod +x {program})" in message


def test_a_command_on_an_installed_plugins_type_names_both(write, program):
    class EntryPoint:
        value = "tqtest.recorder:Worker.factory"
    path = write(f"[recorder]\ncommand: {program}\n")
    message = error_of(path, {"recorder": EntryPoint()})
    assert message == (
        f"{path}: [recorder] command = {program!r}: worker type 'recorder' is also an "
        "installed plugin's: entry point 'recorder' in worker.plugins "
        "(tqtest.recorder:Worker.factory); expected one or the other (rename this section, "
        "or uninstall the plugin)")


@pytest.mark.parametrize("section, expected", [
    ("DEFAULT", "expected command: in a worker type's own section"),
    ("amqp", "expected command: in a worker type's own section"),
    ("resize_a", "expected command: in the type's section [resize]: its subgroups all run "
                 "its command"),
    ("bad name!", "the section's name is the worker type: expected 1-200 letters"),
])
def test_command_where_no_worker_type_is_is_an_error(write, program, section, expected):
    extra = "" if section == "resize_a" else "[resize_a]\n\n"
    path = write(f"[resize]\ncommand: {program}\nworkers: a\n\n{extra}"
                 f"[{section}]\ncommand: {program}\n")
    assert f"[{section}] command = {program!r}: {expected}" in error_of(path)


def test_a_root_supervisor_refuses_a_program_others_may_change_unless_it_runs_as_a_user(
        write, tmp_path, program):
    # Given a program every user may write (a directory only root writes holds it)
    os.chmod(program, 0o777)
    path = write(f"[resize]\ncommand: {program}\n\n[thumbs]\ncommand: {program}\n"
                 "user: nobody\n")
    cfg = config.load(path, (), check_users=False)
    problem = config.untrusted_files(cfg, trusted=(os.stat(tmp_path).st_uid,))
    assert problem is not None
    assert f"refusing to use the [resize] command of {path} as root" in problem
    assert "[thumbs]" not in problem          # it runs as nobody: nobody's business
    os.chmod(program, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    assert config.untrusted_files(cfg, trusted=(os.stat(tmp_path).st_uid,)) is None
