"""Unit tests for taskqueue.runtime.formats: loading format plugins from their entry points.

Entry points are built in the test, pointing at stdlib objects, so no
distribution needs to be installed; what an installed one does is covered by
tests/integration/test_dispatcher.py with the tqtest formats.
"""
from importlib.metadata import EntryPoint

from taskqueue.runtime.formats import GROUP, fingerprint, load, load_installed


def ep(name, value):
    return EntryPoint(name, value, GROUP)


def test_load_gives_a_reader_when_the_entry_point_names_a_function():
    fmt = load("application/x-test", [ep("application/x-test", "os.path:split")])
    assert fmt.problem is None
    assert fmt.read("a/b") == ("a", "b")
    assert fmt.origin == "os.path:split"


def test_load_says_why_naming_entry_point_and_content_type_when_the_module_is_missing():
    fmt = load("application/x-test", [ep("application/x-test", "tqtest_no_such_module:read")])
    assert fmt.read is None
    assert fmt.problem.startswith("format application/x-test (tqtest_no_such_module:read) "
                                  "failed to load: ModuleNotFoundError")


def test_load_says_why_when_the_function_is_missing():
    fmt = load("application/x-test", [ep("application/x-test", "json:no_such_function")])
    assert "failed to load: AttributeError" in fmt.problem


def test_load_refuses_an_entry_point_that_is_not_callable():
    fmt = load("application/x-test", [ep("application/x-test", "json:__doc__")])
    assert fmt.read is None
    assert "is not callable: json:__doc__ is a str" in fmt.problem


def test_load_refuses_a_content_type_registered_twice():
    fmt = load("application/x-test", [ep("application/x-test", "json:loads"),
                                      ep("application/x-test", "json:dumps")])
    assert fmt.read is None
    assert "json:loads and json:dumps" in fmt.problem and "registered twice" in fmt.problem


def test_load_refuses_to_replace_a_built_in_content_type():
    for content_type in ("text/plain", "application/json", "text/json"):
        fmt = load(content_type, [ep(content_type, "json:loads")])
        assert fmt.read is None and "read by taskqueue itself" in fmt.problem


def test_load_refuses_a_name_that_is_not_a_content_type():
    fmt = load("workflow", [ep("workflow", "json:loads")])
    assert fmt.read is None and "is not a content type" in fmt.problem


def test_load_installed_never_raises_and_keeps_each_format_apart():
    found = {"application/x-good": [ep("application/x-good", "json:loads")],
             "application/x-bad": [ep("application/x-bad", "tqtest_no_such_module:read")]}
    readers = load_installed(found)
    assert readers["application/x-good"].read is not None
    assert readers["application/x-bad"].problem


def test_fingerprint_changes_when_a_format_comes_goes_or_moves():
    one = {"application/x-a": [ep("application/x-a", "m:read")]}
    assert fingerprint(one) == fingerprint({"application/x-a": [ep("application/x-a", "m:read")]})
    assert fingerprint(one) != fingerprint({})
    assert fingerprint(one) != fingerprint({"application/x-a": [ep("application/x-a", "m:read2")]})


def test_the_dispatcher_logs_each_format_as_it_starts_and_why_a_broken_one_reads_nothing(
        monkeypatch, caplog):
    from taskqueue.runtime import dispatcher, formats
    found = {"application/x-good": [ep("application/x-good", "json:loads")],
             "application/x-bad": [ep("application/x-bad", "tqtest_no_such_module:read")],
             "text/plain": [ep("text/plain", "json:loads")]}
    monkeypatch.setattr(formats, "discover", lambda: found)
    caplog.set_level("INFO")
    readers = dispatcher.load_formats()
    assert set(readers) == set(found)
    lines = {(r.levelname, r.getMessage()) for r in caplog.records}
    assert ("INFO", "format application/x-good (json:loads) loaded") in lines
    assert ("ERROR", "format application/x-bad (tqtest_no_such_module:read) failed to load: "
                     "ModuleNotFoundError: No module named 'tqtest_no_such_module'; messages of "
                     "content type application/x-bad are dead-lettered") in lines
    assert ("ERROR", "format text/plain (json:loads): text/plain is read by taskqueue itself; "
                     "a format cannot replace it; it is not used") in lines


def test_the_entry_point_groups_plugins_register_in_are_the_documented_ones():
    # A contract with every plugin .deb out there (docs/03-writing-a-plugin.md): moving
    # a module must never rename them.
    from taskqueue.runtime import formats, plugins
    assert (plugins.GROUP, formats.GROUP) == ("worker.plugins", "taskqueue.formats")
