"""`taskqueue task ID` and `taskqueue events` on the real broker (docs/06 "Task events"):
a task's life across hosts (a pool in a UTS namespace of its own is the other host),
hostile stream content, no stream, the follow mode's stop, and the lookup budget: under
a second for a recent task with a million older events in the stream."""
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid

import pika
import pytest

from support import (BROKER_HOST, TASKQUEUE, config_text, recorder_config, under_hostname,
                     wait_for)
from taskqueue.cli import eventview
from taskqueue.client import Client
from taskqueue.protocol import events, taskids

OTHER_HOST = "tq-otherhost"
EXIT_NO_EVENTS = 6


@contextlib.contextmanager
def fresh_vhost():
    """A vhost of the test's own (no events stream in it yet), deleted afterwards with
    all it holds."""
    name = f"taskqueue-test-events-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", name], check=True)
    try:
        subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", name, "guest",
                        ".*", ".*", ".*"], check=True)
        yield name
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], check=False)


def cli_config(workdir, vhost, port=5672):
    path = os.path.join(workdir, f"cli-{uuid.uuid4().hex[:6]}.ini")
    with open(path, "w") as f:
        f.write(config_text(vhost, "", port=port))
    return path


def taskqueue(config, *args, timeout=30):
    return subprocess.run([TASKQUEUE, *args, "--config", config], capture_output=True,
                          text=True, timeout=timeout)


def history(config, task_id):
    """(the kinds, the hosts) of `taskqueue task ID`'s event lines, its last line."""
    out = taskqueue(config, "task", task_id)
    if out.returncode != 0:
        return [], [], out.stderr
    lines = out.stdout.splitlines()
    rows = [line.split() for line in lines[:-1]]
    return [row[2] for row in rows], [row[3] for row in rows], lines[-1]


def finished(config, task_id):
    """history() once the task's final event is there."""
    def ended():
        kinds, hosts, last = history(config, task_id)
        return (kinds, hosts, last) if set(kinds) & set(events.FINAL) else None
    return wait_for(ended, 20, lambda: f"a final event of {task_id}: "
                    f"{taskqueue(config, 'task', task_id)}")


def declare_stream(channel):
    """The events stream, as every taskqueue process declares it (plans.event_stream)."""
    channel.queue_declare(events.STREAM, durable=True, arguments=events.stream_arguments(
        events.DEFAULT_RETENTION, events.DEFAULT_MAX_BYTES))


@pytest.mark.timeout(120)
def test_a_tasks_history_names_each_stage_and_the_hosts_that_saw_it(
        broker, start_pool, records, client, workdir, vhost):
    here = socket.gethostname()
    start_pool("[DEFAULT]\nworkers: 0\n", command="dispatcher")
    start_pool(recorder_config(records), command="workerpool", prefix=under_hostname(OTHER_HOST))
    wait_for(lambda: broker.counts("worker_recorder")[1] >= 1, 20, f"the pool on {OTHER_HOST}")
    wait_for(lambda: broker.counts("taskqueue")[1] >= 1, 20, "the dispatcher")
    config = cli_config(workdir, vhost)

    done = client.submit("recorder", {"id": "fine"})
    kinds, hosts, last = finished(config, done)
    assert kinds == ["submitted", "started", "done"]
    assert hosts == [here, OTHER_HOST, OTHER_HOST]
    assert re.fullmatch(rf"task {done} \(recorder\): done on {OTHER_HOST} in [0-9.]+s "
                        r"\(3 events since .*, 1m00s before its id's time\)", last), last

    # Through the dispatcher (a raw client: no submitted event): routed here, run there
    routed = taskids.new_id()
    broker.submit("recorder", {"id": "routed"}, message_id=routed)
    kinds, hosts, _ = finished(config, routed)
    assert list(zip(kinds, hosts)) == [("routed", here), ("started", OTHER_HOST),
                                       ("done", OTHER_HOST)]

    # A raising task with max_retries 0: failed, with the exception as its reason
    failed = client.submit("recorder", {"id": "boom", "raise": True})
    kinds, hosts, last = finished(config, failed)
    assert kinds == ["submitted", "started", "failed"]
    assert last.startswith(f"task {failed} (recorder): failed on {OTHER_HOST}: raised "
                           "RuntimeError: task boom asked to fail (3 events since ")

    # Refused by the worker before its plugin sees it: dead, and why
    refused = taskids.new_id()
    broker.submit_one_hop("recorder", {"id": "forged"}, message_id=refused,
                          headers={"x-taskqueue-reason": "forged"})
    kinds, hosts, last = finished(config, refused)
    assert (kinds, hosts) == (["dead"], [OTHER_HOST])
    assert f"dead on {OTHER_HOST}: refused: " in last and "x-taskqueue-reason" in last

    # --json: the decoded events, one a line
    out = taskqueue(config, "task", "--json", done)
    found = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(e["event"], e["host"], e["type"]) for e in found] == [
        ("submitted", here, "recorder"), ("started", OTHER_HOST, "recorder"),
        ("done", OTHER_HOST, "recorder")]
    assert found[1]["attempt"] == 1 and found[1]["child"].startswith("recorder#")
    assert found[2]["duration"] >= 0 and found[0]["child"].startswith("tq-test-")

    # `events` shows them all with their task, --type keeps the type's own
    out = taskqueue(config, "events", "--type", "recorder")
    assert out.returncode == 0, out.stderr
    for task_id in (done, routed, failed, refused):
        assert task_id in out.stdout
    assert taskqueue(config, "events", "--type", "resize").stdout == ""
    out = taskqueue(config, "events", "--task", done, "--json")
    assert [json.loads(line)["event"] for line in out.stdout.splitlines()] == [
        "submitted", "started", "done"]


@pytest.mark.timeout(60)
def test_a_task_without_events_and_a_vhost_without_stream_exit_6_and_say_which(workdir):
    with fresh_vhost() as vhost:
        config = cli_config(workdir, vhost)
        for args in (["task", taskids.new_id()], ["events"], ["events", "--follow"]):
            out = taskqueue(config, *args)
            assert (out.returncode, out.stdout) == (EXIT_NO_EVENTS, "")
            assert out.stderr == (
                f"taskqueue: no events stream taskqueue_events on 127.0.0.1:5672 vhost "
                f"'{vhost}': events are off ([amqp] events) or nothing has written one yet\n")
        # ... and it was not created by asking
        connection = pika.BlockingConnection(pika.ConnectionParameters(
            BROKER_HOST, virtual_host=vhost))
        try:
            with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="NOT_FOUND"):
                connection.channel().queue_declare(events.STREAM, passive=True)
        finally:
            connection.close()
        with Client(host=BROKER_HOST, vhost=vhost) as client:
            client.submit("recorder", {"id": "one"})    # the stream, and an event of another
        wait_for(lambda: taskqueue(config, "events").stdout, 10, "the submitted event")
        task_id = "0123456789abcdef0123456789abcdef"    # a uuid4-like id: no time in it
        out = taskqueue(config, "task", task_id)
        assert (out.returncode, out.stdout) == (EXIT_NO_EVENTS, "")
        assert re.fullmatch(rf"taskqueue: no events for task {task_id} since \S+ \S+, the "
                            r"last 1h00m \(its id tells no time; --since reads further "
                            r"back\)\n", out.stderr), out.stderr
        epoch = "00000000000070008000000000000000"      # a UUIDv7 of 1970: read from 0
        out = taskqueue(config, "task", epoch)
        assert (out.returncode, out.stdout) == (EXIT_NO_EVENTS, "")
        assert out.stderr.startswith(f"taskqueue: no events for task {epoch} since "), out.stderr


@pytest.mark.timeout(60)
def test_an_unreachable_broker_exits_4(workdir, vhost):
    config = cli_config(workdir, vhost, port=1)
    for args in (["task", taskids.new_id()], ["events"]):
        out = taskqueue(config, *args)
        assert out.returncode == 4, out
        assert "cannot connect to the broker" in out.stderr


def hostile_batches(task_id, now):
    """What a publisher to the vhost may write into the stream: (body, timestamp) pairs
    around the good events of `task_id`."""
    stamp = int(now)
    good = dict(task=task_id, type="recorder")
    origin = dict(host="h", child="recorder#0", pid=42)
    return [
        (b"not json at all", None),
        (b"\xff\xfe\x00 not UTF-8", None),
        (b"[" * 100_000, None),
        (b"x" * (events.MAX_MESSAGE + 1), None),
        (events.encode(dict(origin, host="client"), [dict(good, event="submitted", at=now)]),
         stamp),
        (json.dumps({"host": "h\x1b[2J\x1b]0;owned\x07", "child": "recorder#0", "pid": -1,
                     "events": [
                         dict(good, event="started", at=now + 0.1, attempt=1),
                         [1, 2],
                         {"event": "done"},
                         dict(good, event="done", at="yesterday"),
                         dict(good, event="done", at=float("nan")),
                         dict(good, event="retried", at=now + 0.2,
                              reason="\x1b[31m" + "r" * 100_000, attempt=True, delay="soon"),
                     ]}).encode(), stamp),
        # stamped far in the future: a forgery that must not end the reading early
        (events.encode(dict(origin, child="c\u202e\r\nforged line"),
                       [dict(good, event="requeued", at=now + 0.3)]), 2**40),
        (events.encode(origin, [dict(good, event="dead", at=now + 0.4,
                                     reason="refused:\nline two\x1b[0m")]), stamp),
    ]


@pytest.mark.timeout(60)
def test_hostile_stream_content_is_skipped_or_escaped_and_counted_once(workdir):
    with fresh_vhost() as vhost:
        config = cli_config(workdir, vhost)
        task_id = taskids.new_id()
        connection = pika.BlockingConnection(pika.ConnectionParameters(
            BROKER_HOST, virtual_host=vhost, frame_max=131072))
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            declare_stream(channel)
            for body, stamp in hostile_batches(task_id, time.time()):
                channel.basic_publish("", events.STREAM, body,
                                      pika.BasicProperties(timestamp=stamp))
        finally:
            connection.close()
        skipped = "taskqueue: 8 malformed event(s) skipped, in 5 message(s) of " \
                  "taskqueue_events\n"

        out = taskqueue(config, "task", task_id)
        assert out.returncode == 0, out.stderr
        assert "\x1b" not in out.stdout
        assert all(line.isprintable() for line in out.stdout.splitlines())
        kinds = [line.split()[2] for line in out.stdout.splitlines()[:-1]]
        assert kinds == ["submitted", "started", "retried", "requeued", "dead"]
        assert "h\\x1b[2J\\x1b]0;owned\\x07" in out.stdout
        assert "c\\u202e\\r\\nforged line[42]" in out.stdout
        assert "reason=\\x1b[31m" + "r" * (events.MAX_REASON - 5) + "\n" in out.stdout
        assert out.stdout.splitlines()[-1].startswith(
            f"task {task_id} (recorder): dead on h: refused:\\nline two\\x1b[0m (5 events since")
        # the messages without the task's id are not even decoded (eventstream.mentioning)
        assert out.stderr == skipped.replace("8 ", "4 ").replace("5 message", "1 message")

        out = taskqueue(config, "events", "--json")
        assert out.returncode == 0 and out.stderr == skipped
        found = [json.loads(line) for line in out.stdout.splitlines()]
        assert [e["event"] for e in found] == ["submitted", "started", "retried", "requeued",
                                               "dead"]
        assert out.stdout.isascii()
        assert "pid" not in found[2] and "attempt" not in found[2] and "delay" not in found[2]
        out = taskqueue(config, "events")
        assert out.returncode == 0 and out.stderr == skipped
        assert "\x1b" not in out.stdout and "\r" not in out.stdout
        assert len(out.stdout.splitlines()) == 5


class Lines:
    """The lines a process writes on its stdout, as they come (a thread reads them)."""

    def __init__(self, process):
        self.lines = []
        self._thread = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream):
        for line in stream:
            self.lines.append(line)

    def holding(self, text):
        return [line for line in self.lines if text in line]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_events_follow_prints_new_events_of_its_type_until_a_signal_then_exits_0(
        client, workdir, vhost, stop):
    before = client.submit("recorder", {"id": "before"})     # the stream, with an older event
    config = cli_config(workdir, vhost)
    process = subprocess.Popen([TASKQUEUE, "events", "--follow", "--since", "0", "--type",
                                "recorder", "--config", config], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        out = Lines(process)
        # Until the follower reads (RabbitMQ 3.10 counts no stream consumer): a task of
        # another type, and one of its type, each round, until one of its type shows.
        others, mine = [], []

        def shown():
            others.append(client.submit("other", {"id": "other"}))
            mine.append(client.submit("recorder", {"id": "mine"}))
            deadline = time.monotonic() + 1
            while time.monotonic() < deadline and not out.holding(mine[-1]):
                time.sleep(0.02)
            return out.holding(mine[-1])
        [line] = wait_for(shown, 20, "the followed event")
        assert line.split()[2:6] == ["submitted", "recorder", mine[-1], socket.gethostname()]
        process.send_signal(stop)
        assert process.wait(5) == 0
        assert process.stderr.read() == ""
        assert not any(out.holding(task_id) for task_id in others)
        assert not out.holding(before)      # older than --since 0
    finally:
        process.kill()
        process.wait()


@pytest.mark.once_per_broker
@pytest.mark.timeout(300)
def test_a_recent_task_is_found_within_a_second_among_a_million_older_events(workdir):
    """The budget of issue 22. "Older" is the broker's clock: RabbitMQ attaches a
    consumer by the time it wrote each chunk, so the million events are written first,
    and the task submitted once they lie further back than the lookup's margin."""
    with fresh_vhost() as vhost:
        config = cli_config(workdir, vhost)
        connection = pika.BlockingConnection(pika.ConnectionParameters(
            BROKER_HOST, virtual_host=vhost))
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            declare_stream(channel)
            for _ in range(1000):
                now = time.time()
                body = events.encode({"host": "filler", "child": "filler#0", "pid": 1}, [
                    {"event": "done", "task": uuid.uuid4().hex, "type": "filler", "at": now,
                     "duration": 0.001} for _ in range(1000)])
                channel.basic_publish("", events.STREAM, body,
                                      pika.BasicProperties(timestamp=int(now)))
            written = time.time()
        finally:
            connection.close()
        # Waiting for time to pass: the lookup starts CLOCK_SKEW before the task's time.
        while time.time() < written + eventview.CLOCK_SKEW + 2:
            time.sleep(0.5)
        with Client(host=BROKER_HOST, vhost=vhost) as client:
            task_id = client.submit("recorder", {"id": "recent"})
        figures = []
        for _ in range(3):
            began = time.monotonic()
            out = taskqueue(config, "task", task_id)
            figures.append(time.monotonic() - began)
            assert out.returncode == 0, out.stderr
            assert out.stdout.splitlines()[-1].startswith(
                f"task {task_id} (recorder): not finished yet; last submitted")
        out = taskqueue(config, "task", "-v", task_id)     # what it read (pika's log too)
        [(messages, ended)] = re.findall(r"read (\d+) messages of taskqueue_events from .* "
                                         r"in [0-9.]+s \(ended: (\w+)\)", out.stderr)
        print(f"taskqueue task among 1M older events: {', '.join(f'{s:.3f}s' for s in figures)}"
              f" (whole command); read {messages} messages, ended: {ended}")
        assert int(messages) <= 3 and ended == "idle"
        assert min(figures) <= 1.0, figures
