"""An example taskqueue plugin: worker type `echo`."""
from setuptools import setup

setup(
    name="taskqueue-echo",
    version="0.1.0",
    description="Example taskqueue worker: logs each workitem and replies with it",
    packages=["taskqueue_echo"],
    install_requires=["taskqueue"],
    entry_points={"worker.plugins": ["echo = taskqueue_echo:EchoWorker.factory"]},
)
