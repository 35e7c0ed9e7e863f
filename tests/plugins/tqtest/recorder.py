"""A test plugin that records what happened to each task, as files.

The workitem is a JSON object: `id` names the task; optional `sleep` (seconds
of waiting), `cpu` (seconds of busy computing, holding the GIL as real work
does), `alloc` (MiB to allocate and keep), `raise` (handle_task raises), `noack` (returns unsettled), `twice`
(acks twice), `exit` (the process exits with that code mid-task), `log` (a text the
plugin logs at DEBUG, then at INFO, from its handle_task thread), `until` (a path:
`raise` and `exit` apply only while it does not exist, so a test can fix the
cause of a dead-lettered task and requeue it), `gate` (a path: the task waits, up to
60 s, until it exists, so a test can hold a task between its delivery and its work),
`fail_times` (raise on the first N
attempts, counted by the header x-taskqueue-retries), `retry` (a delay, or null for the
backoff: call channel.retry with it, on the first `retry_times` attempts or always),
`reply` (a value: sent back with channel.reply, as JSON {"id", "reply", "pid"}),
`reject` (the task is rejected without requeue: dead-lettered by the broker),
`steps` (N: N steps of 0.1 s of waiting, in Python: a cancel's TaskCancelled reaches it
within a step, and the task writes `<id>.<pid>.interrupted` before it goes on up),
`forge` (a text, written `forge_repeat` times (default 1) on the process's report pipe to
its supervisor, as hostile plugin code could: tests/integration/test_reports_trust.py).

A body that is not JSON (plain text) is a task with no options, named by its
message id (else `plain`).

For each task it writes `<record_dir>/<id>.<pid>.start` before the work and
`<id>.<pid>.done` after it, each a JSON object describing the process and the
message (`body` as text, `content_type`). The
directory comes from the group's config option `record_dir`, else from
$TQTEST_RECORD_DIR (so the specification's config runs unchanged).
"""
import gc
import grp
import json
import logging
import os
import time

from taskqueue.worker import BaseWorker, TaskCancelled

log = logging.getLogger(__name__)


class Recorder(BaseWorker):
    ballast = []

    def setup(self):
        self.record_dir = self.settings.get("record_dir") or os.environ["TQTEST_RECORD_DIR"]

    def handle_task(self, channel, method, header, body):
        try:
            task = json.loads(body)
        except ValueError:
            task = {"id": header.message_id or "plain"}
        if task.get("gate"):
            deadline = time.monotonic() + 60
            while not os.path.exists(task["gate"]) and time.monotonic() < deadline:
                time.sleep(0.01)
        self._record(task["id"], "start", method, header, body)
        attempt = (header.headers or {}).get("x-taskqueue-retries", 0)
        if "retry" in task and attempt < task.get("retry_times", float("inf")):
            channel.retry(task["retry"])
            self._record(task["id"], "retried", method, header, body)
            return
        if attempt < task.get("fail_times", 0):
            raise RuntimeError(f"task {task['id']} fails attempt {attempt}")
        if task.get("log"):
            log.debug("debug: %s", task["log"])
            log.info("%s", task["log"])
        if task.get("forge"):
            _forge(task["forge"].encode() * task.get("forge_repeat", 1))
        if task.get("sleep"):
            time.sleep(task["sleep"])
        try:
            for _ in range(task.get("steps", 0)):
                time.sleep(0.1)
        except TaskCancelled:
            self._record(task["id"], "interrupted", method, header, body)
            raise
        if task.get("alloc"):
            self.ballast.append(bytearray(task["alloc"] * 2**20))  # MiB kept until the process ends
        if task.get("cpu"):
            deadline = time.monotonic() + task["cpu"]
            while time.monotonic() < deadline:
                sum(range(1000))
        failing = not os.path.exists(task["until"]) if "until" in task else True
        if "exit" in task and failing:
            os._exit(task["exit"])
        if task.get("raise") and failing:
            raise RuntimeError(f"task {task['id']} asked to fail")
        if task.get("reject"):
            channel.basic_reject(method.delivery_tag, requeue=False)
            self._record(task["id"], "done", method, header, body)
            return
        if "reply" in task:
            channel.reply(json.dumps({"id": task["id"], "reply": task["reply"],
                                      "pid": os.getpid()}), content_type="application/json")
        if not task.get("noack"):
            channel.basic_ack(method.delivery_tag)
            if task.get("twice"):
                channel.basic_ack(method.delivery_tag)
        self._record(task["id"], "done", method, header, body)

    def _record(self, task_id, event, method, header, body):
        facts = {
            "pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid(),
            "groups": sorted(os.getgroups()), "home": os.environ.get("HOME"),
            "user": os.environ.get("USER"), "redelivered": method.redelivered,
            "routing_key": method.routing_key, "time": time.time(),
            "group_names": sorted(g.gr_name for g in grp.getgrall() if g.gr_gid in os.getgroups()),
            "body": body.decode("utf-8", "backslashreplace"), "content_type": header.content_type,
            "headers": sorted(header.headers or {}),
            "retries": (header.headers or {}).get("x-taskqueue-retries", 0),
            # The trace context as it arrived, any kind of value (repr: bytes, tables).
            "trace": {name: repr(value) for name, value in (header.headers or {}).items()
                      if name in ("traceparent", "tracestate")},
        }
        # A retried task comes back to the same process: one file per attempt.
        attempt = f"-{facts['retries']}" if facts["retries"] else ""
        path = os.path.join(self.record_dir, f"{task_id}.{os.getpid()}{attempt}.{event}")
        with open(path + ".tmp", "w") as f:
            json.dump(facts, f)
        os.rename(path + ".tmp", path)


class BrokenFactory(BaseWorker):
    @classmethod
    def factory(cls, group):
        raise ValueError("this plugin cannot be constructed")


def _forge(data):
    """Write `data` on this child's report pipe, found as any plugin code could find it."""
    from taskqueue.supervision.child import ChildContext
    (ctx,) = [o for o in gc.get_objects() if isinstance(o, ChildContext)]
    view = memoryview(data)
    while view:
        view = view[os.write(ctx._report_fd, view[:65536]):]
