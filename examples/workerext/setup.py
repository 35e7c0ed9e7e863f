"""The plugin of the original specification, as its own distribution."""
from setuptools import setup

setup(
    name="taskqueue-example-workerext",
    version="0.1.0",
    description="The specification's example worker plugin for taskqueue",
    packages=["extpackage"],
    install_requires=["taskqueue"],
    entry_points={'worker.plugins':
                  ['workerext = extpackage.workerext:Worker.factory']},
)
