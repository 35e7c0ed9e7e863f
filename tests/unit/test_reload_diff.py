"""diff_specs: what a reload starts, stops, restarts and leaves alone."""
from taskqueue.supervision.specs import ChildSpec, diff_specs


def spec(name, processes=1, user=None, settings=(), target=print):
    return ChildSpec(name, processes, target, user=user, settings=settings)


def test_diff_specs_sorts_specs_into_added_changed_removed_and_unchanged():
    old = [spec("a"), spec("b"), spec("c", settings=("x",)), spec("d", user="bifh1")]
    new = [spec("a"), spec("c", settings=("y",)), spec("d", user="bifh2"), spec("e")]
    added, changed, removed, unchanged = diff_specs(old, new)
    assert [s.name for s in added] == ["e"]
    assert [s.name for s in changed] == ["c", "d"]
    assert changed[0].settings == ("y",)  # the new spec, to start
    assert [s.name for s in removed] == ["b"]
    assert [s.name for s in unchanged] == ["a"]


def test_diff_specs_ignores_the_target_function_but_not_the_process_count():
    assert diff_specs([spec("a", target=print)], [spec("a", target=repr)])[3]
    added, changed, removed, unchanged = diff_specs([spec("a", 1)], [spec("a", 2)])
    assert [s.processes for s in changed] == [2] and not unchanged


def test_diff_specs_of_identical_lists_changes_nothing():
    specs = [spec("a"), spec("b", 3, "bifh1", ("s",))]
    assert diff_specs(specs, list(specs)) == ([], [], [], specs)


def test_a_reload_restarts_the_dispatcher_when_a_format_plugin_came_or_changed(
        tmp_path, monkeypatch):
    from importlib.metadata import EntryPoint

    from taskqueue.cli.daemon import child_specs
    from taskqueue.host import config
    from taskqueue.runtime import formats
    path = tmp_path / "config.ini"
    path.write_text("[DEFAULT]\nworkers: 1\n")
    cfg = config.load(str(path), {}, check_users=False)

    def specs_with(found):
        monkeypatch.setattr(formats, "discover", lambda: found)
        return child_specs(cfg, dispatcher=True, workers=False)

    def fmt(value):
        return {"application/x-a": [EntryPoint("application/x-a", value, formats.GROUP)]}
    before = specs_with({})
    assert diff_specs(before, specs_with({}))[3] == before            # nothing installed: kept
    added, changed, removed, unchanged = diff_specs(before, specs_with(fmt("m:read")))
    assert [s.name for s in changed] == ["dispatcher"]                # installed: restarted
    assert [s.name for s in diff_specs(specs_with(fmt("m:read")), specs_with(fmt("m:other")))[1]] \
        == ["dispatcher"]                                             # changed: restarted
