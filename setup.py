"""taskqueue: a small distributed task queue over AMQP (RabbitMQ) for Debian hosts."""
from setuptools import find_packages, setup

setup(
    name="taskqueue",
    version="0.1.0",
    description="Distributed task queue over AMQP with a supervised worker pool",
    python_requires=">=3.11",
    # Named explicitly: debian/ beside a flat layout breaks auto-discovery.
    packages=find_packages(include=["taskqueue", "taskqueue.*"]),
    install_requires=["gevent", "pika>=1.2"],
    entry_points={"console_scripts": ["taskqueue = taskqueue.cli.main:main"]},
)
