"""A plugin whose module fails at import, as a plugin with a missing dependency would."""
import tqtest_no_such_dependency  # noqa: F401

from taskqueue.worker import BaseWorker


class Worker(BaseWorker):
    def handle_task(self, channel, method, header, body):
        channel.basic_ack(method.delivery_tag)
