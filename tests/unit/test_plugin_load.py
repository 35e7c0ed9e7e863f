"""Unit tests for taskqueue.runtime.plugins.load with the entry point the supervisor
found: used as it is, looked up again when it no longer imports (an upgrade moved
or removed the plugin). Entry points are built in the test; discover() is replaced
by one returning what the test says is installed now."""
from importlib.metadata import EntryPoint

import pytest

from taskqueue.errors import PluginError
from taskqueue.runtime import plugins


class Worker:
    def __init__(self, group):
        self.group = group

    @classmethod
    def factory(cls, group):
        return cls(group)

    def handle_task(self, channel, method, header, body):
        pass


def ep(value, name="t"):
    return EntryPoint(name, value, plugins.GROUP)


HERE = f"{__name__}:Worker.factory"


@pytest.fixture
def installed(monkeypatch):
    """What discover() finds; the scans counted."""
    now = {}
    scans = []

    def discover():
        scans.append(1)
        return dict(now)
    monkeypatch.setattr(plugins, "discover", discover)
    return now, scans


def test_the_supervisors_entry_point_is_loaded_without_a_scan(installed):
    now, scans = installed
    worker = plugins.load("t", None, ep(HERE))
    assert isinstance(worker, Worker) and scans == []


def test_one_that_no_longer_imports_is_looked_up_again(installed):
    now, scans = installed
    now["t"] = ep(HERE)
    worker = plugins.load("t", None, ep("tq_no_such_module_moved:Worker.factory"))
    assert isinstance(worker, Worker) and scans == [1]


def test_one_removed_since_says_it_is_not_installed(installed):
    with pytest.raises(PluginError, match="'t' is not installed"):
        plugins.load("t", None, ep("tq_no_such_module_removed:Worker.factory"))


def test_one_that_still_fails_says_why_once(installed):
    now, scans = installed
    now["t"] = ep("tq_no_such_module_broken:Worker.factory")
    with pytest.raises(PluginError, match="failed to import: ModuleNotFoundError"):
        plugins.load("t", None, ep("tq_no_such_module_broken:Worker.factory"))
    assert scans == [1]


def test_without_one_the_child_scans_as_before(installed):
    now, scans = installed
    now["t"] = ep(HERE)
    assert isinstance(plugins.load("t", None), Worker) and scans == [1]
