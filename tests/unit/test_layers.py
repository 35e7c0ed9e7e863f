"""The package's layering, read from its imports: each subpackage imports only the
layers below it, no module imports itself back through others, pika stays in the
broker layer and gevent out of the pure ones.

The layers, top to bottom, are the table below; each subpackage's docstring says
the same in words. A module that fits no layer fails too: a new module is placed
on purpose. Imports inside functions count (a lazy import is still a dependency).
"""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "taskqueue"

#: Top to bottom: a module may import its own layer and those below it.
LAYERS = [
    ("cli", ("taskqueue.__main__", "taskqueue.cli")),
    # taskqueue.testing runs a plugin as the worker does, its task made as the client makes it.
    ("client", ("taskqueue.client", "taskqueue.testing")),
    ("runtime", ("taskqueue.runtime", "taskqueue.worker")),
    ("supervision", ("taskqueue.supervision",)),
    ("broker", ("taskqueue.broker",)),
    ("host", ("taskqueue.host",)),
    ("protocol", ("taskqueue.protocol",)),
    ("ground", ("taskqueue.errors", "taskqueue.printable", "taskqueue.redact", "taskqueue")),
]
#: Third-party packages kept to some layers.
ONLY_IN = {"pika": {"broker"}}
NEVER_IN = {"gevent": {"client", "host", "protocol", "ground"}}


def layer_of(module):
    for rank, (name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + ".") and prefix != "taskqueue":
                return rank, name
    return None


def module_name(path, root):
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path, root):
    """(line, imported module) for each import of `path`, relative ones resolved;
    `from pkg import name` counts as pkg.name when that is a module of the tree."""
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                as_module = root.parent / (candidate.replace(".", "/") + ".py")
                as_package = root.parent / candidate.replace(".", "/") / "__init__.py"
                found.append((node.lineno, candidate if as_module.exists()
                              or as_package.exists() else base))
    return found


def check(root):
    """Every breach of the layering under `root` (a package directory), as sentences."""
    problems, graph = [], {}
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        here = layer_of(module)
        if here is None:
            problems.append(f"{path}: module {module} is in no layer (see LAYERS)")
            continue
        graph.setdefault(module, set())
        for line, imported in imports_of(path, root):
            top = imported.split(".")[0]
            if top in ONLY_IN and here[1] not in ONLY_IN[top]:
                problems.append(f"{path}:{line}: {module} ({here[1]}) imports {top}, which only "
                                f"{', '.join(sorted(ONLY_IN[top]))} may import")
            if top in NEVER_IN and here[1] in NEVER_IN[top]:
                problems.append(f"{path}:{line}: {module} ({here[1]}) imports {top}")
            if top != root.name:
                continue
            there = layer_of(imported)
            if there is None:
                continue
            if imported != module:
                graph[module].add(imported)
            if there[0] < here[0]:
                problems.append(f"{path}:{line}: {module} ({here[1]}) imports {imported} "
                                f"({there[1]}), a layer above it")
    problems.extend(f"import circle among: {', '.join(circle)}" for circle in circles(graph))
    return problems


def circles(graph):
    """The strongly connected groups of more than one module (Tarjan), each sorted: every
    module of one imports every other, directly or through the rest."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_keeps_its_layers():
    problems = check(PACKAGE)
    assert not problems, "\n".join(problems)


def test_every_subpackage_says_what_it_owns_and_may_import():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and "import" in doc, f"{init}: no docstring saying what it may import"


def _tree(tmp_path, files):
    root = tmp_path / "taskqueue"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for sub in {p.parent for p in root.rglob("*.py")}:
        (sub / "__init__.py").touch()
    return root


@pytest.mark.parametrize("files, expected", [
    ({"protocol/routing.py": "from taskqueue.cli import main\n", "cli/main.py": ""},
     "taskqueue.protocol.routing (protocol) imports taskqueue.cli.main (cli), a layer above"),
    ({"protocol/routing.py": "def f():\n    from ..cli import main\n", "cli/main.py": ""},
     "taskqueue.protocol.routing (protocol) imports taskqueue.cli.main (cli), a layer above"),
    ({"broker/a.py": "from . import b\n", "broker/b.py": "from taskqueue.broker import a\n"},
     "import circle among: taskqueue.broker.a, taskqueue.broker.b"),
    ({"host/config.py": "import pika\n"},
     "taskqueue.host.config (host) imports pika, which only broker may import"),
    ({"protocol/delays.py": "from gevent import sleep\n"},
     "taskqueue.protocol.delays (protocol) imports gevent"),
    ({"misc.py": ""}, "module taskqueue.misc is in no layer"),
])
def test_a_breach_of_the_layering_is_named_with_its_file_and_line(tmp_path, files, expected):
    problems = check(_tree(tmp_path, files))
    assert any(expected in problem for problem in problems), problems


def test_imports_down_the_layers_pass(tmp_path):
    root = _tree(tmp_path, {"cli/main.py": "from taskqueue.broker import amqp\nimport gevent\n",
                            "broker/amqp.py": "import pika\nfrom ..protocol import topology\n",
                            "protocol/topology.py": "from taskqueue import errors\n",
                            "errors.py": ""})
    assert check(root) == []
