"""Worker type `echo`: logs the workitem; when the task has reply_to, sends it back there."""
import logging

from taskqueue.worker import BaseWorker

log = logging.getLogger(__name__)


class EchoWorker(BaseWorker):
    def handle_task(self, channel, method, header, body):
        log.info("echo %s: %s", header.message_id or "-", body[:1000].decode("utf-8", "replace"))
        if header.reply_to:
            # Same property object type pika gave us: no pika import needed here.
            reply = type(header)(correlation_id=header.correlation_id or header.message_id,
                                 content_type=header.content_type)
            channel.basic_publish("", header.reply_to, body, reply)
        channel.basic_ack(method.delivery_tag)
