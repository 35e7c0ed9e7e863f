"""The specification's plugin, its class copied unchanged.

`do_something_heavy` stands in for the real work: it logs, and appends the
worker's pid to the file named by $WORKEREXT_RECORD when that is set (the
tests use it to see which process handled each task).
"""
import logging
import os

from taskqueue.worker import BaseWorker

log = logging.getLogger(__name__)


def do_something_heavy():
    log.info("doing something heavy")
    record = os.environ.get("WORKEREXT_RECORD")
    if record:
        with open(record, "a") as f:
            f.write(f"{os.getpid()}\n")


class Worker(BaseWorker):
    def handle_task(self, channel, method, header, body):
        do_something_heavy()
        channel.basic_ack(method.delivery_tag)
