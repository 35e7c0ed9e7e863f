"""taskqueue: a small distributed task queue over AMQP (RabbitMQ) for Debian hosts.

Built through setuptools' standard backend (pyproject.toml names it)."""
import ast
import os

from setuptools import find_packages, setup


def package_version():
    """taskqueue/__init__.py's __version__: the version the running code reports, written
    only there. Read without importing the package (that would need its dependencies)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "taskqueue", "__init__.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and getattr(node.targets[0], "id", None) == "__version__"):
            return ast.literal_eval(node.value)
    raise RuntimeError(f"{path}: no line `__version__ = \"...\"` to take the version from")


setup(
    name="taskqueue",
    version=package_version(),
    description="Distributed task queue over AMQP with a supervised worker pool",
    python_requires=">=3.11",
    # Named explicitly: debian/ beside a flat layout breaks auto-discovery.
    packages=find_packages(include=["taskqueue", "taskqueue.*"]),
    install_requires=["gevent", "pika>=1.2", "croniter"],
    entry_points={"console_scripts": ["taskqueue = taskqueue.cli.main:main"]},
)
