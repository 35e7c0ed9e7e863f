"""The man pages the .deb ships (debian/taskqueue.1, debian/taskqueue.conf.5) against
their sources: the command line's parser and the config's declared options.

debian/manpages.py writes both pages; these tests fail when a committed page is not
what it writes now (a stale page), and, reading the committed pages on their own, when
a command, a command's option or a config option is missing from them.
"""
import importlib.util
import inspect
import os
import re

import pytest

from taskqueue.cli.main import _parser as command_parser
from taskqueue.host import config

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GENERATOR = os.path.join(REPO, "debian", "manpages.py")
COMMAND_PAGE = os.path.join(REPO, "debian", "taskqueue.1")
CONFIG_PAGE = os.path.join(REPO, "debian", "taskqueue.conf.5")
#: The .SS heading of each section in taskqueue.conf(5), and what config.py declares.
CONFIG_SECTIONS = {"Worker type and subgroup sections": config.GROUP_OPTIONS,
                   "Section [amqp]": config.AMQP_OPTIONS,
                   "Section [dispatcher]": config.DISPATCHER_OPTIONS,
                   "Section [logging]": config.LOGGING_OPTIONS,
                   "Section [supervisor]": config.SUPERVISOR_OPTIONS,
                   "Section [metrics]": config.METRICS_OPTIONS}


def load_generator():
    spec = importlib.util.spec_from_file_location("manpages", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def roff(text):
    """As the generator escapes text for roff (tests/unit reads the result, not the code)."""
    return text.replace("\\", "\\e").replace("-", "\\-")


def subsection(page, heading):
    """The text of one .SS of a page, up to the next .SS or .SH; None if it has none."""
    marker = f'.SS "{roff(heading)}"\n'
    if marker not in page:
        return None
    rest = page[page.index(marker) + len(marker):]
    ends = [i for i in (rest.find("\n.SS "), rest.find("\n.SH ")) if i >= 0]
    return rest[:min(ends)]


def leaf_commands(parser, words=()):
    """(words, parser) of every command a user runs: `submit`, `dead list`..."""
    found = []
    for action in parser._actions:
        if hasattr(action, "_choices_actions"):
            for name, sub in action.choices.items():
                found += leaf_commands(sub, words + (name,)) or [(words + (name,), sub)]
    return found


def missing_from_command_page(page):
    """What taskqueue(1) lacks: each command, its arguments and their help."""
    missing = []
    for words, parser in leaf_commands(command_parser()):
        command = " ".join(words)
        section = subsection(page, command)
        if section is None:
            missing.append(f"taskqueue {command}")
            continue
        for action in parser._actions:
            if "-h" in action.option_strings:
                continue
            for name in action.option_strings or [action.metavar]:
                if not re.search(rf"\\f[BI]{re.escape(roff(name))}\\fR", section):
                    missing.append(f"taskqueue {command} {name}")
            if roff(action.help) not in section:
                missing.append(f"the help of taskqueue {command} {action.dest}")
    return missing


def missing_from_config_page(page):
    """What taskqueue.conf(5) lacks: each option config.py declares, in its section."""
    missing = []
    for heading, options in CONFIG_SECTIONS.items():
        labels = option_labels(subsection(page, heading) or "")
        missing += [f"{heading}: {option}" for option in options
                    if not any(f"\\fB{roff(option)}\\fR" in label for label in labels)]
    return missing


def option_labels(section):
    """The label line of each .TP of a section: `\\fBmax_tasks\\fR, \\fBmax_memory\\fR`."""
    return re.findall(r"^\.TP\n(.*)$", section, re.M)


def test_the_committed_pages_are_what_the_generator_makes_now():
    for path, text in load_generator().pages().items():
        assert read(path) == text, (
            f"{os.path.relpath(path, REPO)} is stale: run python3 debian/manpages.py "
            "(in a virtualenv where taskqueue imports) and commit the result")


def test_every_command_and_each_of_its_options_is_in_taskqueue_1():
    commands = {" ".join(words) for words, _ in leaf_commands(command_parser())}
    assert commands >= {"run", "dispatcher", "workerpool", "submit", "dead list",
                        "dead requeue", "dead purge", "check-config", "status"}
    assert missing_from_command_page(read(COMMAND_PAGE)) == []


def test_every_config_option_is_in_taskqueue_conf_5_under_its_section():
    assert missing_from_config_page(read(CONFIG_PAGE)) == []


def test_the_docs_option_table_names_exactly_the_options_config_declares():
    generator = load_generator()
    assert generator.check_table(generator.option_table(), config) == []


def test_the_options_config_declares_are_those_its_loader_reads():
    # The loader reads each option by name, one convert() call each: every name it reads
    # for a group is in GROUP_OPTIONS and the other way round; every name read is declared.
    converted = r'self\.convert\(\s*(?:\[[^\]]*\]|\w+),\s*"(\w+)"'
    read_anywhere = set(re.findall(converted, inspect.getsource(config._Loader)))
    read_for_groups = set(re.findall(converted, "".join(
        inspect.getsource(getattr(config._Loader, name))
        for name in ("groups", "group", "retry_policy"))))
    assert read_for_groups == set(config.GROUP_OPTIONS)
    declared = set().union(*CONFIG_SECTIONS.values())
    assert read_anywhere <= declared, read_anywhere - declared


@pytest.mark.parametrize("label, named", [
    ('.SS "dead requeue"', "taskqueue dead requeue"),
    ("\\fB\\-\\-delay\\fR", "taskqueue submit --delay"),
    ("\\fB\\-\\-yes\\fR", "taskqueue dead purge --yes"),
])
def test_a_command_page_missing_a_command_or_an_option_is_caught(label, named):
    page = read(COMMAND_PAGE)
    assert label in page
    assert named in missing_from_command_page(page.replace(label, ""))


@pytest.mark.parametrize("option, heading", [
    ("password_file", "Section [amqp]"), ("retry_max_delay", "Worker type and subgroup sections"),
    ("status_dir", "Section [supervisor]")])
def test_a_config_page_missing_an_option_is_caught(option, heading):
    page, mark = read(CONFIG_PAGE), f"\\fB{roff(option)}\\fR"
    label = next(label for label in option_labels(subsection(page, heading)) if mark in label)
    damaged = page.replace(f".TP\n{label}\n", f".TP\n{label.replace(mark, 'gone')}\n")
    assert f"{heading}: {option}" in missing_from_config_page(damaged)
