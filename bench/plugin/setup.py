"""The benchmark's no-op worker plugin (installed into the bench venv only)."""
from setuptools import setup

setup(
    name="taskqueue-bench-plugin",
    version="0.1.0",
    packages=["tqbench"],
    entry_points={"worker.plugins": ["bench = tqbench.noop:Noop.factory"]},
)
