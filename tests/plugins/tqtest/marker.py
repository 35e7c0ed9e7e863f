"""A fast test plugin for load and fault runs: marks each task done, then acks.

The workitem is `{"id": ...}` (optionally `"sleep"` seconds, and `"announce"`:
true, to leave `<record_dir>/<id>.<pid>.holding` before the sleep, so that a
test can kill the process in the middle of that task). The id goes to
`<record_dir>/<pid>.done` (one line, appended before the ack), so a task
seen twice there was completed twice: a duplicate, never a loss. A task the
broker delivered one hop (routing key: the worker type, not `worker_<type>`)
is noted in `<record_dir>/<pid>.onehop` too.
"""
import json
import os
import time

from taskqueue.worker import BaseWorker


class Marker(BaseWorker):
    def setup(self):
        path = os.path.join(self.settings["record_dir"], f"{os.getpid()}.done")
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        self.onehop_fd = os.open(path[:-len(".done")] + ".onehop",
                                 os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)

    def handle_task(self, channel, method, header, body):
        task = json.loads(body)
        if task.get("announce"):
            open(os.path.join(self.settings["record_dir"],
                              f"{task['id']}.{os.getpid()}.holding"), "w").close()
        if task.get("sleep"):
            time.sleep(task["sleep"])
        os.write(self.fd, f"{task['id']}\n".encode())
        if method.routing_key == self.group.worker_type:
            os.write(self.onehop_fd, f"{task['id']}\n".encode())
        channel.basic_ack(method.delivery_tag)
