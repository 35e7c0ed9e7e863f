"""`taskqueue new-plugin`: the names it derives and refuses, the files it writes and the
directories it will not write into (taskqueue/cli/newplugin.py, plugintemplate.py).
The generated project's own tests, and the pool serving it, are in
tests/integration/test_new_plugin.py; its .deb in tests/system/test_new_plugin_deb.py."""
import ast
import datetime
import email.utils
import os
import re
import stat

import pytest

from taskqueue.cli import newplugin
from taskqueue.cli.main import main
from taskqueue.host.config import RESERVED_SECTIONS

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HOSTILE = ["../x", "a b", "Ünïcode", "-x", "x" * 300, "", "x" * 41, "A", "Echo", "a_b",
           "a.b", "a+b", "a--b", "b-", "a/b", "a\nb", "a\x1b[2Jb", "a=b", "[a]", "é",
           "a\u2028b", "a\x00b"]
NOW = datetime.datetime(2026, 12, 24, 9, 30, 5, tzinfo=datetime.timezone.utc)


@pytest.mark.parametrize("name", HOSTILE)
def test_a_name_no_debian_package_or_entry_point_takes_is_refused_in_one_short_line(name):
    with pytest.raises(ValueError) as caught:
        newplugin.plugin_names(name)
    message = str(caught.value)
    assert message.startswith("plugin name ") and "is not usable: expected 1-40" in message
    assert message.isprintable() and len(message) < 300, message


@pytest.mark.parametrize("name", sorted(RESERVED_SECTIONS - {"DEFAULT"}) + ["default"])
def test_a_name_taskqueue_reserves_for_its_own_sections_is_refused(name):
    with pytest.raises(ValueError, match=f"plugin name '{name}' is reserved: taskqueue's own"):
        newplugin.plugin_names(name)


@pytest.mark.parametrize("name", ["workerpool", "dispatcher"])
def test_a_name_that_makes_one_of_taskqueues_own_packages_is_refused(name):
    with pytest.raises(ValueError, match="is reserved"):
        newplugin.plugin_names(name)


def test_the_own_packages_refused_are_those_taskqueues_debian_control_builds():
    with open(os.path.join(REPO, "debian", "control")) as f:
        fields = re.findall(r"^(?:Package|Source): *(\S+)", f.read(), re.MULTILINE)
    assert set(fields) == newplugin.OWN_PACKAGES


@pytest.mark.parametrize("name, package", [("resize", "taskqueue_resize"),
                                           ("mail-out-2", "taskqueue_mail_out_2"),
                                           ("x", "taskqueue_x"), ("9" * 40, "taskqueue_" + "9" * 40)])
def test_the_names_of_a_plugin_are_derived_from_its_name(name, package):
    assert newplugin.plugin_names(name) == newplugin.PluginNames(
        worker_type=name, package=package, distribution=f"taskqueue-{name}",
        binary=f"python3-taskqueue-{name}")


@pytest.mark.parametrize("name", ["../x", "x" * 300, "amqp", "", "Ünïcode"])
def test_new_plugin_with_a_bad_name_exits_2_with_one_line_and_writes_nothing(
        name, tmp_path, capsys):
    target = tmp_path / "project"
    assert main(["new-plugin", "--dir", str(target), "--", name]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("taskqueue: plugin name ") and err.count("\n") == 1, err
    assert not target.exists()


def generate(tmp_path, name="mail-out", umask=0o077):
    """Run `taskqueue new-plugin NAME --dir <tmp>/project` under `umask`; its path."""
    target = tmp_path / "project"
    old = os.umask(umask)
    try:
        assert main(["new-plugin", name, "--dir", str(target)]) == 0
    finally:
        os.umask(old)
    return target


def listing(root):
    return {str(path.relative_to(root)): stat.S_IMODE(path.stat().st_mode)
            for path in root.rglob("*")}


def test_new_plugin_writes_the_project_with_its_modes_whatever_the_umask(tmp_path, capsys):
    root = generate(tmp_path, umask=0o077)
    directories = {"taskqueue_mail_out", "tests", "debian", "debian/source"}
    files = {"taskqueue_mail_out/__init__.py", "taskqueue_mail_out/worker.py",
             "tests/test_mail_out.py", "setup.py", "pyproject.toml", "README.md", ".gitignore",
             "debian/control", "debian/rules", "debian/changelog", "debian/copyright",
             "debian/py3dist-overrides", "debian/python3-taskqueue-mail-out.triggers",
             "debian/source/format"}
    assert listing(root) == {**{d: 0o755 for d in directories},
                             **{f: 0o755 if f == "debian/rules" else 0o644 for f in files}}
    assert stat.S_IMODE(root.stat().st_mode) == 0o755
    assert "python3 -m pytest" in capsys.readouterr().out


def test_the_generated_python_compiles_and_registers_the_worker_class_it_defines(tmp_path):
    root = generate(tmp_path)
    for path in root.rglob("*.py"):
        compile(path.read_text(), str(path), "exec")
    setup = ast.parse((root / "setup.py").read_text())
    call = next(node for node in ast.walk(setup) if isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "setup")
    kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    assert (kwargs["name"], kwargs["packages"]) == ("taskqueue-mail-out", ["taskqueue_mail_out"])
    assert kwargs["entry_points"] == {
        "worker.plugins": ["mail-out = taskqueue_mail_out.worker:Worker.factory"]}
    worker = ast.parse((root / "taskqueue_mail_out" / "worker.py").read_text())
    classes = {node.name: [base.id for base in node.bases] for node in worker.body
               if isinstance(node, ast.ClassDef)}
    assert classes["Worker"] == ["BaseWorker"]


def test_the_debian_files_name_the_packages_and_the_pools_trigger(tmp_path):
    root = generate(tmp_path)
    control = (root / "debian" / "control").read_text()
    assert "Source: taskqueue-mail-out\n" in control
    assert "Package: python3-taskqueue-mail-out\n" in control
    assert "Depends: python3-taskqueue, ${python3:Depends}, ${misc:Depends}\n" in control
    # The trigger the pool's package declares interest in (its postinst reloads the pool).
    with open(os.path.join(REPO, "debian", "taskqueue-workerpool.triggers")) as f:
        interests = {line.split()[1] for line in f if line.startswith("interest")}
    activated = (root / "debian" / "python3-taskqueue-mail-out.triggers").read_text().split()
    assert activated[0] == "activate-noawait" and activated[1] in interests
    assert "dh $@ --with python3 --buildsystem=pybuild" in (root / "debian" / "rules").read_text()
    first = (root / "debian" / "changelog").read_text().splitlines()[0]
    assert first == "taskqueue-mail-out (0.1.0) unstable; urgency=medium"


def test_the_changelog_date_is_rfc_2822_and_no_marker_is_left():
    names = newplugin.plugin_names("mail-out")
    files = newplugin.project_files(names, "A B <a@b.example>", NOW)
    changelog = dict((path, text) for path, text, _ in files)["debian/changelog"]
    trailer = changelog.splitlines()[-1]
    assert trailer == " -- A B <a@b.example>  Thu, 24 Dec 2026 09:30:05 +0000"
    assert email.utils.parsedate_to_datetime(trailer.split("  ")[1]) == NOW
    assert not any(re.search(r"@[A-Z_]+@", path + text) for path, text, _ in files)


@pytest.mark.parametrize("environ", [{}, {"DEBFULLNAME": "Eve\nSource: evil", "DEBEMAIL": "e@x.org"},
                                     {"DEBFULLNAME": "Eve", "DEBEMAIL": "e@x.org>\nX: y"},
                                     {"DEBFULLNAME": "Eve <e@x.org>", "DEBEMAIL": "e@x.org"}])
def test_a_maintainer_the_environment_gives_badly_is_replaced_by_the_placeholder(environ):
    names = newplugin.plugin_names("mail-out")
    assert newplugin.maintainer_of(names, environ) == \
        "taskqueue-mail-out maintainers <taskqueue-mail-out@example.org>"


def test_the_maintainer_comes_from_debfullname_and_debemail_as_dch_reads_them():
    names = newplugin.plugin_names("mail-out")
    assert newplugin.maintainer_of(names, {"DEBFULLNAME": "Ada Lovelace",
                                           "DEBEMAIL": "ada@example.net"}) == \
        "Ada Lovelace <ada@example.net>"


def test_new_plugin_refuses_a_directory_that_holds_anything_and_leaves_it_alone(
        tmp_path, capsys):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "setup.py").write_text("mine")
    assert main(["new-plugin", "resize", "--dir", str(target)]) == 2
    assert capsys.readouterr().err == (f"taskqueue: {target} is not empty; expected a new or "
                                       "empty directory (--dir), so that nothing in it is "
                                       "overwritten\n")
    assert listing(target) == {"setup.py": stat.S_IMODE((target / "setup.py").stat().st_mode)}
    assert (target / "setup.py").read_text() == "mine"


def test_new_plugin_refuses_a_file_or_a_symlink_to_one_as_its_directory(tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    for target in ("file", "link"):
        assert main(["new-plugin", "resize", "--dir", str(tmp_path / target)]) == 2
        assert "exists and is not a directory" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "mine"


def test_new_plugin_writes_into_an_empty_directory(tmp_path):
    (tmp_path / "project").mkdir()
    root = generate(tmp_path, name="resize")
    assert (root / "taskqueue_resize" / "worker.py").exists()


def test_new_plugin_writes_to_taskqueue_name_in_the_current_directory_by_default(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["new-plugin", "resize"]) == 0
    assert (tmp_path / "taskqueue-resize" / "setup.py").exists()
