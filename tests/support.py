"""What the integration and fault tests share: a broker client, a supervisor
process with its log, the records test plugins write, and waiting on events.
"""
import base64
import contextlib
import grp
import json
import os
import pwd
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid

import pika
import pytest

from taskqueue.host.config import AmqpSettings
from taskqueue.protocol.topology import queue_arguments

BROKER_HOST = "127.0.0.1"


TASKQUEUE = os.path.join(os.path.dirname(sys.executable), "taskqueue")


#: Every queue a test may create; deleted before each test.
QUEUES = ["taskqueue", "taskqueue_dead"] + [f"worker_{t}" for t in (
    "recorder", "recorder2", "worker1", "worker2", "workerext", "echo", "brokenimport",
    "brokenfactory", "nosuchtype", "traced", "tq-fresh", "cmd", "other")]
#: Their high queues (taskqueue/protocol/priorities.py), which the workers declare beside them.
QUEUES += [f"{queue}+high" for queue in QUEUES if queue.startswith("worker_")]
#: The delay chain's queues (taskqueue/protocol/delays.py): a delayed task of an earlier test must
#: not arrive in a later one.
QUEUES += [f"taskqueue.delay.{level}" for level in range(20)]
#: The cancels stream (protocol/cancels.py): an earlier test's cancels must not count in a later one.
QUEUES += ["taskqueue_cancels"]
#: The schedules stream (protocol/firings.py): an earlier test's firings are no later one's history.
QUEUES += ["taskqueue_schedules"]


def wait_for(predicate, timeout, what, interval=0.02):
    """Poll `predicate` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what() if callable(what) else what}")
        time.sleep(interval)


class Broker:
    """A blocking pika client on the test vhost: publish, count, fetch."""

    def __init__(self, vhost, port=5672):
        self.vhost = vhost
        self.port = port
        #: What the queues are declared with; a test with other [amqp] queue settings sets it.
        self.settings = AmqpSettings()
        self.connect()

    def reset(self):
        for queue in QUEUES:
            self.channel.queue_delete(queue)

    def submit(self, worker_type, workitem, **props):
        body = json.dumps({"worker_type": worker_type, "workitem": workitem}).encode()
        self.publish_raw(body, content_type="application/json", **props)

    def publish_raw(self, body, queue="taskqueue", raw_headers=None, **props):
        """Publish `body` to `queue`; `raw_headers`: the headers table's bytes (RawHeaders)."""
        props.setdefault("delivery_mode", 2)
        # Declared exactly as taskqueue declares it (default settings: quorum queues).
        self.channel.queue_declare(queue, durable=True,
                                   arguments=queue_arguments(queue, self.settings))
        # A quorum queue created a moment ago on a loaded machine may refuse a
        # publish (a nack: not taken) until its leader settles; taking it again is
        # what any client does, and no copy of it exists.
        for attempt in range(20):
            try:
                props_out = (pika.BasicProperties(**props) if raw_headers is None
                             else RawHeaders(raw_headers, **props))
                self.channel.basic_publish("", queue, body, props_out)
                return
            except pika.exceptions.NackError:
                time.sleep(0.1 * (attempt + 1))
        pytest.fail(f"the broker refused a publish to {queue} 20 times")

    def submit_one_hop(self, worker_type, workitem, routing_key=None, **props):
        """Publish a task the one-hop way (docs/02-messages-and-wire-format.md, "One hop"),
        as a raw client does: the
        workitem as body (bytes as they are), the worker_type header, to taskqueue.direct
        by its type; confirmed and mandatory (UnroutableError if no queue took it).
        `raw_headers=` (the table's bytes, RawHeaders) instead of the headers."""
        if not self.one_hop_declared:
            declare_one_hop(self.channel, self.settings)
            self.one_hop_declared = True
        props.setdefault("delivery_mode", 2)
        props.setdefault("content_type", "application/json")
        raw = props.pop("raw_headers", None)
        if raw is None:
            props["headers"] = {**props.get("headers", {}), "worker_type": worker_type}
        body = workitem if isinstance(workitem, bytes) else json.dumps(workitem).encode()
        for attempt in range(20):   # a quorum queue just declared may nack: see publish_raw
            try:
                self.channel.basic_publish("taskqueue.direct", routing_key or worker_type, body,
                                           pika.BasicProperties(**props) if raw is None
                                           else RawHeaders(raw, **props), mandatory=True)
                return
            except pika.exceptions.NackError:
                time.sleep(0.1 * (attempt + 1))
        pytest.fail(f"the broker refused a one-hop publish for {worker_type} 20 times")

    def connect(self):
        self.one_hop_declared = False
        self.connection = pika.BlockingConnection(pika.ConnectionParameters(
            BROKER_HOST, self.port, virtual_host=self.vhost,
            credentials=pika.PlainCredentials("guest", "guest")))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()

    def _unless_missing(self, operation, queue, missing):
        """Run operation(queue); a queue that does not exist (yet) gives `missing`.

        So does a quorum queue whose process is still starting (541 noproc right
        after it was declared): callers poll, and the next call finds it.
        """
        try:
            return operation(queue)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise
            self.channel = self.connection.channel()
            self.channel.confirm_delivery()
            return missing
        except pika.exceptions.ConnectionClosedByBroker as exc:
            if exc.reply_code != 541 or "noproc" not in exc.reply_text:
                raise
            self.connect()
            return missing

    def counts(self, queue):
        """(messages ready, consumers) of `queue`, or (0, 0) when it does not exist."""
        def count(queue):
            frame = self.channel.queue_declare(queue, passive=True)
            return frame.method.message_count, frame.method.consumer_count
        return self._unless_missing(count, queue, (0, 0))

    def drain(self, queue):
        """Take every message now in `queue`: a list of (properties, body)."""
        def take_all(queue):
            messages = []
            while True:
                method, props, body = self.channel.basic_get(queue, auto_ack=True)
                if method is None:
                    return messages
                messages.append((props, body))
        return self._unless_missing(take_all, queue, [])

    def close(self):
        if self.connection.is_open:
            self.connection.close()


def _b64(data):
    return base64.b64encode(data).decode()


def _pid_of_node(node):
    """An Erlang pid in the external term format (NEW_PID_EXT), as RabbitMQ encodes the
    token of a direct reply-to name, of the node `node`."""
    return (b"\x83Xv" + struct.pack(">H", len(node)) + node
            + struct.pack(">III", 15876, 6, 1796536582))


#: Direct reply-to names that are no channel of this broker's: garbage, and a well-formed
#: pid of a node that does not exist (no check of the name's shape tells these apart).
#: RabbitMQ 3.x closes the publisher's connection for both, 4.0 for garbage only
#: (test_broker_versions.py).
CRAFTED = {
    "garbage": "amq.rabbitmq.reply-to." + _b64(b"hello world") + "." + _b64(b"0123456789abcdef"),
    "nonode": ("amq.rabbitmq.reply-to." + _b64(_pid_of_node(b"nobody@nowhere")) + "."
               + _b64(b"0123456789abcdef")),
}


def closes_connection(kind, version):
    """Whether RabbitMQ `version` (major, minor) closes the connection of whoever publishes
    to CRAFTED[kind]: 3.x for both, 4.0 for garbage only (test_broker_versions.py)."""
    return kind == "garbage" or version < (4, 0)


def broker_version(broker):
    """The (major, minor) of the broker a Broker client is connected to (server properties)."""
    raw = broker.connection._impl.server_properties.get("version", b"0.0")
    text = raw.decode() if isinstance(raw, bytes) else raw
    return tuple(int(part) for part in text.split(".")[:2])


def declare_one_hop(channel, settings=None):
    """What a raw client declares before its first one-hop publish
    (docs/02-messages-and-wire-format.md, "One hop"):
    the alternate exchange, the direct exchange naming it, taskqueue bound to the first."""
    channel.exchange_declare("taskqueue.unrouted", exchange_type="fanout", durable=True)
    channel.exchange_declare("taskqueue.direct", exchange_type="direct", durable=True,
                             arguments={"alternate-exchange": "taskqueue.unrouted"})
    channel.queue_declare("taskqueue", durable=True,
                          arguments=queue_arguments("taskqueue", settings or AmqpSettings()))
    channel.queue_bind("taskqueue", "taskqueue.unrouted", routing_key="")


def bindings(vhost):
    """{(exchange, queue, routing key)} of the vhost's bindings from the one-hop exchanges
    (rabbitmqctl: the test runs as root on the broker's host)."""
    out = subprocess.run(["rabbitmqctl", "-q", "list_bindings", "-p", vhost, "--no-table-headers",
                          "source_name", "destination_name", "routing_key"],
                         capture_output=True, text=True, check=True).stdout
    found = set()
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0] in ("taskqueue.direct", "taskqueue.unrouted"):
            found.add(tuple(parts))
    return found


#: The policy of nacking_vhost: stop_nacking() clears it.
NACK_POLICY = "tq-test-nack"


@contextlib.contextmanager
def nacking_vhost(max_length, port=5672, queues=r"^(taskqueue|worker_.*)$",
                  overflow="reject-publish-dlx"):
    """A vhost of the test's own, and a Broker on it, whose task queues (`taskqueue`,
    `worker_*`: classic, which hold the limit exactly) take at most `max_length`
    messages and nack every publish beyond (overflow reject-publish-dlx): each nacked
    copy is dead-lettered into taskqueue_dead (declared here, outside the policy), so
    a test counts there how often a publish was tried.
    `queues` (a regex) names other queues to limit instead, e.g. taskqueue_dead, or the
    delay queues with overflow "reject-publish" (their dead-letter exchange is the next
    level of the chain: a nacked copy must not travel on)."""
    name = f"taskqueue-test-nack-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    ctl = ["rabbitmqctl", "-q"]
    subprocess.run(ctl + ["add_vhost", name], check=True)
    try:
        subprocess.run(ctl + ["set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
                       check=True)
        subprocess.run(ctl + ["set_policy", "-p", name, "--apply-to", "queues", NACK_POLICY,
                              queues, json.dumps(
                                  {"max-length": max_length, "overflow": overflow})],
                       check=True)
        broker = Broker(name, port)
        broker.settings = AmqpSettings(queue_type="classic")
        broker.channel.queue_declare("taskqueue_dead", durable=True,
                                     arguments=queue_arguments("taskqueue_dead", broker.settings))
        try:
            yield name, broker
        finally:
            broker.close()
    finally:
        subprocess.run(ctl + ["delete_vhost", name], check=False)


def stop_nacking(vhost):
    """The queues of nacking_vhost `vhost` have room again: its policy is cleared."""
    subprocess.run(["rabbitmqctl", "-q", "clear_policy", "-p", vhost, NACK_POLICY], check=True)


class Records:
    """What the tqtest Recorder plugin wrote: one file per task event."""

    def __init__(self, path):
        self.path = path

    def all(self, event="done"):
        out = []
        for name in os.listdir(self.path):
            parts = name.split(".")
            if len(parts) == 3 and parts[2] == event:
                with open(os.path.join(self.path, name)) as f:
                    out.append(dict(json.load(f), id=parts[0]))
        return out

    def ids(self, event="done"):
        return [r["id"] for r in self.all(event)]


#: A config line with a password, as taskqueue.host.config.secret_options sees it.
HOLDS_SECRET = re.compile(r"^\s*(password|tls_key_file)\s*[:=]|amqps?://[^/@\s:]*:[^@/\s]*@",
                          re.MULTILINE | re.IGNORECASE)


def config_text(vhost, body, heartbeat=None, amqp_extra="", port=5672, status_dir=None):
    """`body` with an [amqp] section for the test broker and, given a status_dir, a
    [supervisor] section that keeps the status sockets out of the host's /run/taskqueue."""
    amqp = f"[amqp]\nhost: {BROKER_HOST}\nport: {port}\nvhost: {vhost}\n"
    if heartbeat is not None:
        amqp += f"heartbeat: {heartbeat}\n"
    supervisor = f"\n[supervisor]\nstatus_dir: {status_dir}\n" if status_dir else ""
    return f"{body.rstrip()}\n\n{amqp}{amqp_extra}{supervisor}"


class Pool:
    """A `taskqueue` supervisor process (run, dispatcher or workerpool) and its log."""

    def __init__(self, workdir, config, command="run", env=None, extra_args=(), log="stderr",
                 prefix=()):
        """`prefix`: a command that execs the rest (`unshare ... sh -c 'exec "$@"' sh`)."""
        self.config_path = os.path.join(workdir, f"config-{uuid.uuid4().hex[:6]}.ini")
        with open(self.config_path, "w") as f:
            f.write(config)
        if HOLDS_SECRET.search(config):   # else taskqueue refuses it, as it must
            os.chmod(self.config_path, 0o640)
        self.log_path = self.config_path.replace(".ini", ".log")
        self._log = open(self.log_path, "w")
        # --log stderr: where /dev/log exists, `auto` would send a daemon's lines to syslog.
        # log=None leaves the target to the config's [logging].
        log_args = ["--log", log] if log else []
        self.process = subprocess.Popen(
            [*prefix, TASKQUEUE, command, "--config", self.config_path, *log_args, *extra_args],
            cwd=workdir,
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    @property
    def pid(self):
        return self.process.pid

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def wait_log(self, pattern, timeout=15, count=1):
        """Wait until `pattern` (a regex) matched `count` lines of the log; return the matches."""
        def found():
            matches = re.findall(pattern, self.log(), re.MULTILINE)
            return matches if len(matches) >= count else None
        return wait_for(found, timeout, lambda: f"{count} log line(s) matching {pattern!r}\n"
                        f"--- log:\n{self.log()[-3000:]}")

    def children(self):
        """Pids of the live children of the supervisor."""
        out = subprocess.run(["ps", "--ppid", str(self.pid), "-o", "pid=,stat="],
                             capture_output=True, text=True).stdout.split()
        return [int(pid) for pid, stat in zip(out[::2], out[1::2]) if not stat.startswith("Z")]

    def stop(self, timeout=30):
        """SIGTERM and wait; return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


def alive(pid):
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):   # gone before the open, or the read
        return False


def under_hostname(name):
    """A Pool prefix that runs the supervisor in a UTS namespace of its own, named `name`:
    its processes are "another host" (needs root and util-linux's unshare)."""
    if os.getuid() != 0:
        pytest.skip("a UTS namespace needs root")
    return ("unshare", "--uts", "sh", "-c", f'hostname {name} && exec "$@"', "sh")


def recorder_config(records, processes=1, extra=""):
    return (f"[DEFAULT]\nworkers: 0\n\n[recorder]\nworkers: {processes}\n"
            f"record_dir: {records.path}\n{extra}")


def _exists(db, name):
    try:
        db.getpwnam(name) if db is pwd else db.getgrnam(name)
        return True
    except KeyError:
        return False


@contextlib.contextmanager
def system_users(users=(), groups=(), members=()):
    """System users (each with a group of its name) and groups, created where missing
    with adduser/addgroup, and `members` ((user, group) pairs) added; on exit what was
    created is removed and the memberships undone. Needs root."""
    if os.getuid() != 0:
        pytest.skip("creating users and switching to them needs root")
    created_users, created_groups = [], []
    for group in groups:
        if not _exists(grp, group):   # the packages create `taskqueue`; a test host may not have it
            subprocess.run(["addgroup", "--system", "--quiet", group], check=True)
            created_groups.append(group)
    for user in users:
        if not _exists(pwd, user):
            subprocess.run(["adduser", "--system", "--group", "--quiet", "--no-create-home",
                            "--home", f"/nonexistent/{user}", user], check=True)
            created_users.append(user)
    for user, group in members:
        subprocess.run(["adduser", "--quiet", user, group], check=True)
    try:
        yield
    finally:
        for user, group in members:
            subprocess.run(["deluser", "--quiet", user, group], check=False)
        for user in created_users:
            subprocess.run(["deluser", "--quiet", "--system", user], check=False)
            if _exists(grp, user):
                subprocess.run(["delgroup", "--quiet", "--system", user], check=False)
        for group in created_groups:
            subprocess.run(["delgroup", "--quiet", "--system", group], check=False)


def report_figures(terminalreporter, title, figures):
    """Print a suite's {test: {figure: value}} at the end of the run (pytest_terminal_summary)."""
    if not figures:
        return
    terminalreporter.section(title)
    for test, values in figures.items():
        terminalreporter.write_line(f"{test}:")
        for name, value in values.items():
            terminalreporter.write_line(f"    {name}: {value}")


# -- hostile messages: header tables written byte by byte ------------------------------

def amqp_table(body):
    """An AMQP field table: its entries' bytes with their length in front."""
    return struct.pack(">I", len(body)) + body


def amqp_key(name):
    data = name.encode()
    return bytes([len(data)]) + data


def deep_table(depth, key="a"):
    """A header table nested `depth` levels deep ({key: {key: ...}}), written by hand:
    pika's own encoder recurses too. 700 levels take about 5 KB."""
    table = amqp_table(b"")
    for _ in range(depth):
        table = amqp_table(amqp_key(key) + b"F" + table)
    return table


_PLACEHOLDER = {"tq-test-raw-headers-placeholder": None}


class RawHeaders(pika.BasicProperties):
    """Message properties whose headers go on the wire as the table bytes `raw`, whatever
    they hold (RabbitMQ 3.10 takes a table nested 700 deep, or a timestamp past 9999)."""

    def __init__(self, raw, **props):
        super().__init__(headers=dict(_PLACEHOLDER), **props)
        self.raw = raw

    def encode(self):
        pieces = []
        pika.data.encode_table(pieces, _PLACEHOLDER)
        placeholder = b"".join(pieces)
        encoded = b"".join(super().encode())
        assert encoded.count(placeholder) == 1
        return [encoded.replace(placeholder, self.raw)]


@contextlib.contextmanager
def stand_in_echo_worker(port, vhost, reply_headers):
    """A thread answering every task of type echo (one hop) with b"the answer", its
    headers the table bytes `reply_headers(n)` for the n-th reply (from 0); yields the
    correlation ids answered, in order. Stands in for a worker whose replies pika
    cannot decode (it writes them by hand, RawHeaders)."""
    connection = pika.BlockingConnection(pika.ConnectionParameters(
        BROKER_HOST, port, virtual_host=vhost))
    channel = connection.channel()
    declare_one_hop(channel)
    channel.queue_declare("worker_echo", durable=True,
                          arguments=queue_arguments("worker_echo", AmqpSettings()))
    channel.queue_bind("worker_echo", "taskqueue.direct", routing_key="echo")
    stop, answered = threading.Event(), []

    def answer():
        while not stop.is_set():
            method, props, _ = channel.basic_get("worker_echo", auto_ack=True)
            if method is None:
                connection.sleep(0.02)
                continue
            channel.basic_publish("", props.reply_to, b"the answer", RawHeaders(
                reply_headers(len(answered)), correlation_id=props.correlation_id))
            answered.append(props.correlation_id)
    worker = threading.Thread(target=answer, daemon=True)
    worker.start()
    try:
        yield answered
    finally:
        stop.set()
        worker.join(10)
        connection.close()


def serving(broker, start_pool, body, queue):
    """A pool started with config `body`, once `queue` and taskqueue have consumers."""
    pool = start_pool(body)
    wait_for(lambda: broker.counts(queue)[1] >= 1, 20, f"a consumer of {queue}")
    wait_for(lambda: broker.counts("taskqueue")[1] >= 1, 20, "the dispatcher")
    return pool


def stream_events(vhost, task=None, port=5672, stream="taskqueue_events"):
    """Every task event in the vhost's events stream (protocol/events.py), decoded, of
    `task` only when given, by time; [] when there is no stream. Read as `taskqueue
    task` reads it (eventstream.EventReader), from the stream's start to its end."""
    from taskqueue.broker.eventstream import EventReader
    from taskqueue.errors import NoEventStream
    settings = AmqpSettings(host=BROKER_HOST, port=port, vhost=vhost)
    try:
        with EventReader(settings, start=0, stream=stream, name="test events") as reader:
            found = [e for e in reader.events() if task is None or e["task"] == task]
    except NoEventStream:
        return []
    return sorted(found, key=lambda e: e["at"])
