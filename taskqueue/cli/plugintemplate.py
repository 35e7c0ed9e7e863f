"""The files `taskqueue new-plugin` writes, as text with @MARKERS@ (newplugin.py fills
them in). Python strings and nothing else: no I/O, no name checks (newplugin.py's).

@NAME@ the worker type, @PACKAGE@ the Python package, @DIST@ the distribution and
Debian source, @BINARY@ the binary package, @VERSION@, @MAINTAINER@ ("Name <email>"),
@DATE@ (RFC 2822, debian/changelog's), @YEAR@, @PACKAGE_SHORT@ (the name with
'_' for '-': the test module's). Markers, not str.format: the files hold
braces (Python, JSON) and `${...}` (debian/control, debian/rules) of their own.
"""

#: The project's first version: setup.py's and debian/changelog's.
VERSION = "0.1.0"

PACKAGE_INIT = '''\
"""taskqueue worker plugin @DIST@: worker type `@NAME@` (its code is in worker.py)."""
'''

WORKER = '''\
"""Worker type `@NAME@`.

A task's workitem is a JSON object {"text": "..."}: the worker counts its words and,
when the task waits for an answer (reply_to), replies {"words": N}. That is the
placeholder for your own work: replace count_words() (and parse_workitem(), for the
workitems your worker takes). README.md says how to test, package and install it.
"""
import json
import logging

from taskqueue.worker import BaseWorker

log = logging.getLogger(__name__)


class BadWorkitem(ValueError):
    """A workitem this worker can never do, however often it is tried."""


class Worker(BaseWorker):
    """One instance in each worker process of type `@NAME@`, built by Worker.factory
    (the entry point in setup.py). self.settings: the options of the [@NAME@] section
    of /etc/taskqueue/config.ini, as strings; self.group: type, subgroup, user."""

    def setup(self):
        """Once per process, before its first task, as the configured user: open here
        what every task shares (a database connection, a client), close it in teardown()."""

    def handle_task(self, channel, method, header, body):
        # This runs in a thread of its own: it may block (I/O, an hour of computing)
        # while the process keeps its connection to the broker alive.
        try:
            workitem = parse_workitem(body)
        except BadWorkitem as exc:
            # Trying again cannot help: rejected without requeue, the task goes to the
            # dead letters (`taskqueue dead list`), and whoever waits for an answer gets
            # taskqueue's failure reply.
            log.warning("task %s rejected: %s", header.message_id or "-", exc)
            channel.basic_reject(method.delivery_tag, requeue=False)
            return
        # Your code goes here. What it raises is retried while this type's max_retries
        # allow, then dead-lettered; channel.retry() puts a task off instead (a service
        # it needs is down): see "Retrying" in taskqueue's docs/03-writing-a-plugin.md.
        result = count_words(workitem["text"])
        if header.reply_to:
            # Sent only to a reply queue (`taskqueue submit --wait`, Client.call), with
            # the task's correlation id.
            channel.reply(json.dumps(result, separators=(",", ":")),
                          content_type="application/json")
        channel.basic_ack(method.delivery_tag)

    def teardown(self):
        """Once per process, after its last task."""


def parse_workitem(body):
    """The workitem in a task's body (JSON bytes): an object with a string "text"."""
    try:
        workitem = json.loads(body)
    except ValueError:      # not UTF-8, or not JSON
        raise BadWorkitem(f"the workitem is not JSON: {body[:60]!r}") from None
    if not isinstance(workitem, dict) or not isinstance(workitem.get("text"), str):
        raise BadWorkitem('expected a JSON object with a string "text", '
                          f"got {body[:60]!r}")
    return workitem


def count_words(text):
    """The small job of the template: replace it with yours."""
    return {"words": len(text.split())}
'''

TESTS = '''\
"""Tests of worker type `@NAME@`. taskqueue.testing.run_task runs each task as a worker
of the pool would, in this process, with no broker and no pool; `result.outcome` is
what the pool does with the task (see "Testing a plugin" in taskqueue's
docs/03-writing-a-plugin.md). Run them with `python3 -m pytest` in the project's directory.
"""
import importlib.metadata

import pytest

from taskqueue.testing import run_task

from @PACKAGE@ import worker
from @PACKAGE@.worker import Worker

#: The reply_to of `taskqueue submit --wait` and Client.call: someone waits for the answer.
CALLER = "amq.rabbitmq.reply-to"
WORKER_TYPE = "@NAME@"


def test_a_task_is_acked_and_its_answer_sent_to_whoever_waits():
    result = run_task(Worker, {"text": "three small words"}, reply_to=CALLER)
    assert result.outcome == "ack"
    assert [(reply.body, reply.content_type) for reply in result.replies] == \\
        [(b'{"words":3}', "application/json")]


def test_a_task_nobody_waits_for_is_only_acked():
    result = run_task(Worker, {"text": "hello"})
    assert (result.outcome, result.replies) == ("ack", ())


@pytest.mark.parametrize("workitem", [b"\\xff not json", [1, 2], {"text": 42}, {}])
def test_a_bad_workitem_is_rejected_and_the_caller_told(workitem):
    result = run_task(Worker, workitem, reply_to=CALLER)
    # Rejected without requeue: the broker dead-letters it; no retry would help.
    assert result.outcome == "reject"
    # Whoever waits gets taskqueue's failure reply, not silence.
    assert [reply.failure is not None for reply in result.replies] == [True]


def test_a_failure_of_the_work_is_retried_then_dead_lettered(monkeypatch):
    def service_down(text):
        raise ConnectionError("the service is down")
    monkeypatch.setattr(worker, "count_words", service_down)
    config = {"max_retries": 2}
    first = run_task(Worker, {"text": "hello"}, config=config)
    assert (first.outcome, type(first.exception)) == ("retry", ConnectionError)
    # The last attempt: the task comes back with its retries counted in this header.
    last = run_task(Worker, {"text": "hello"}, config=config,
                    headers={"x-taskqueue-retries": 2})
    assert last.outcome == "dead"
    assert "ConnectionError" in last.reason


def installed_types():
    return {entry.name for entry in importlib.metadata.entry_points(group="worker.plugins")}


@pytest.mark.skipif(WORKER_TYPE not in installed_types(),
                    reason="the plugin is not installed (pip install ., or its .deb)")
def test_the_installed_entry_point_is_this_worker():
    # Loaded by its entry point's name, as the pool loads it.
    result = run_task(WORKER_TYPE, {"text": "two words"}, reply_to=CALLER)
    assert [reply.body for reply in result.replies] == [b'{"words":2}']
'''

SETUP_PY = '''\
"""taskqueue worker plugin @DIST@: worker type `@NAME@`."""
from setuptools import setup

setup(
    name="@DIST@",
    version="@VERSION@",
    description="taskqueue worker plugin: worker type @NAME@",
    packages=["@PACKAGE@"],
    install_requires=["taskqueue"],
    # The entry point's name is the worker type: installed, the worker pool finds it and
    # runs Worker.factory's workers on the queue worker_@NAME@.
    entry_points={"worker.plugins": ["@NAME@ = @PACKAGE@.worker:Worker.factory"]},
)
'''

PYPROJECT = '''\
# Built through setuptools' standard backend (PEP 517); the metadata is in setup.py.
[build-system]
requires = ["setuptools>=66"]
build-backend = "setuptools.build_meta"

# `python3 -m pytest` in this directory imports the package from here, installed or not.
[tool.pytest.ini_options]
pythonpath = ["."]
testpaths = ["tests"]
'''

README = '''\
# @DIST@

A taskqueue worker plugin: worker type `@NAME@`.
Installed on a host that runs taskqueue's worker pool, its workers consume the queue
`worker_@NAME@`; nothing needs registering.

Written by `taskqueue new-plugin @NAME@`. As written, a task's workitem is a JSON
object `{"text": "..."}` and the worker answers `{"words": N}`; a workitem of another
shape is rejected (dead-lettered).

## Layout

| path | what |
|---|---|
| `@PACKAGE@/worker.py` | the worker: put your code in `handle_task` (see its comments) |
| `tests/test_@PACKAGE_SHORT@.py` | its tests, on `taskqueue.testing.run_task` (no broker needed) |
| `setup.py`, `pyproject.toml` | the distribution; the entry point `@NAME@` in the group `worker.plugins` |
| `debian/` | the Debian package `@BINARY@` |

## Test

With taskqueue importable (its Debian package python3-taskqueue, or a checkout on
`PYTHONPATH`):

    python3 -m pytest

The entry-point test runs once the plugin is installed (`pip install .` in a
virtualenv, or its .deb); before that it is skipped.

## Package and install

    dpkg-buildpackage -us -uc -b        # writes ../@BINARY@_@VERSION@_all.deb
    apt install ../@BINARY@_@VERSION@_all.deb

Installing (or removing) the package makes a running worker pool reload: its
`debian/@BINARY@.triggers` activates the trigger `taskqueue-plugins` of the
package taskqueue-workerpool. Then try it:

    taskqueue submit --wait @NAME@ '{"text": "hello world"}'

How many processes run it, and as which users, is set in the section `[@NAME@]`
of `/etc/taskqueue/config.ini` (`workers: 3`); its options reach the worker as
`self.settings`. Before distributing the package, set the maintainer and the
license in `debian/control`, `debian/changelog` and `debian/copyright`.
'''

DEBIAN_CONTROL = '''\
Source: @DIST@
Section: python
Priority: optional
Maintainer: @MAINTAINER@
# pybuild-plugin-pyproject: debian/rules builds with the pyproject.toml backend;
# python3-wheel: setuptools before 70.1 (Debian 12 has 66) makes wheels with it.
Build-Depends: debhelper-compat (= 13),
               dh-python,
               python3-all,
               pybuild-plugin-pyproject,
               python3-setuptools,
               python3-wheel,
Standards-Version: 4.6.2
Rules-Requires-Root: no

Package: @BINARY@
Architecture: all
Depends: python3-taskqueue, ${python3:Depends}, ${misc:Depends}
Enhances: taskqueue-workerpool
Description: taskqueue worker plugin: @NAME@
 taskqueue is a distributed task queue over AMQP whose worker pool runs
 every installed plugin as supervised processes.
 .
 This plugin provides the worker type "@NAME@" (queue worker_@NAME@).
 Installing or removing it makes a running worker pool reload.
'''

DEBIAN_RULES = '''\
#!/usr/bin/make -f

# The tests (tests/, on taskqueue.testing) need python3-taskqueue, which the
# build need not have: run them with `python3 -m pytest` (README.md). pybuild's
# default unittest run would find nothing.
export PYBUILD_DISABLE = test

# Built through the backend pyproject.toml declares (a wheel made by
# setuptools.build_meta), not the deprecated `setup.py install`. Named, not
# detected: dh-python 5 and 6 (Debian 12 and 13) rate the distutils plugin
# higher for a tree with a setup.py.
export PYBUILD_SYSTEM = pyproject

%:
\tdh $@ --with python3 --buildsystem=pybuild
'''

DEBIAN_CHANGELOG = '''\
@DIST@ (@VERSION@) unstable; urgency=medium

  * Initial release, written by `taskqueue new-plugin @NAME@`.

 -- @MAINTAINER@  @DATE@
'''

DEBIAN_COPYRIGHT = '''\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: @DIST@
Comment: Written by `taskqueue new-plugin`. The License stanza below must be
 replaced by the plugin's real license before this package is distributed.

Files: *
Copyright: @YEAR@ @MAINTAINER@
License: undeclared
 No license has been declared for this plugin yet.
'''

#: setup.py's install_requires "taskqueue" is Debian's python3-taskqueue (for
#: ${python3:Depends}); the build need not have it installed.
DEBIAN_PY3DIST_OVERRIDES = '''\
# setup.py's install_requires "taskqueue" is Debian's python3-taskqueue; it
# need not be installed at build time.
taskqueue python3-taskqueue
'''

#: The trigger taskqueue-workerpool's package declares interest in
#: (debian/taskqueue-workerpool.triggers): its postinst reloads a running pool.
DEBIAN_TRIGGERS = '''\
activate-noawait taskqueue-plugins
'''

DEBIAN_SOURCE_FORMAT = '''\
3.0 (native)
'''

GITIGNORE = '''\
__pycache__/
*.egg-info/
build/
.pybuild/
debian/.debhelper/
debian/@BINARY@/
debian/debhelper-build-stamp
debian/files
debian/*.substvars
debian/*.debhelper.log
'''

#: Each file: its path in the project, its text, its mode.
FILES = (
    ("@PACKAGE@/__init__.py", PACKAGE_INIT, 0o644),
    ("@PACKAGE@/worker.py", WORKER, 0o644),
    ("tests/test_@PACKAGE_SHORT@.py", TESTS, 0o644),
    ("setup.py", SETUP_PY, 0o644),
    ("pyproject.toml", PYPROJECT, 0o644),
    ("README.md", README, 0o644),
    (".gitignore", GITIGNORE, 0o644),
    ("debian/control", DEBIAN_CONTROL, 0o644),
    ("debian/rules", DEBIAN_RULES, 0o755),
    ("debian/changelog", DEBIAN_CHANGELOG, 0o644),
    ("debian/copyright", DEBIAN_COPYRIGHT, 0o644),
    ("debian/py3dist-overrides", DEBIAN_PY3DIST_OVERRIDES, 0o644),
    ("debian/@BINARY@.triggers", DEBIAN_TRIGGERS, 0o644),
    ("debian/source/format", DEBIAN_SOURCE_FORMAT, 0o644),
)
