"""Worker type `echo`: logs the workitem; when the task has reply_to, sends it back there."""
import logging

from taskqueue.worker import BaseWorker

log = logging.getLogger(__name__)


class EchoWorker(BaseWorker):
    def handle_task(self, channel, method, header, body):
        log.info("echo %s: %s", header.message_id or "-", body[:1000].decode("utf-8", "replace"))
        if header.reply_to:
            # With the task's correlation id, and only if reply_to is a reply queue
            # (docs/04-from-application-code.md, "Replies"): never into another queue a
            # submitter names.
            channel.reply(body, content_type=header.content_type)
        channel.basic_ack(method.delivery_tag)
