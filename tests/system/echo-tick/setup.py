"""A plugin package that ships only a schedule, for tests/system/test_packages.py:
installed with apt, it makes the running pool fire `echo-tick` (issue 24) with no
line in the config. Its tasks are for the worker type `echo` of python3-taskqueue-echo."""
from setuptools import setup

setup(
    name="taskqueue-echo-tick",
    version="0.1.0",
    description="Test taskqueue plugin: a schedule every 2s for the echo worker",
    py_modules=["taskqueue_echo_tick"],
    install_requires=["taskqueue"],
    entry_points={"taskqueue.schedules": ["echo-tick = taskqueue_echo_tick:SCHEDULE"]},
)
