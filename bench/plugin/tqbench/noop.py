"""A no-op task that records when it started, then acks.

The workitem is `{"id": ...}`. `<record_dir>/<pid>.rec` gets one line per
task, "<id> <time.time() at the start of handle_task>", appended before the
ack: the bench counts completions and measures latency from these lines.
"""
import json
import os
import time

from taskqueue.worker import BaseWorker


class Noop(BaseWorker):
    def setup(self):
        path = os.path.join(self.settings["record_dir"], f"{os.getpid()}.rec")
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)

    def handle_task(self, channel, method, header, body):
        started = time.time()
        task_id = json.loads(body)["id"]
        os.write(self.fd, f"{task_id} {started:.6f}\n".encode())
        channel.basic_ack(method.delivery_tag)
