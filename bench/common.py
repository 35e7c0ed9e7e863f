"""What every measurement shares: a vhost of its own, a blocking broker client,
processes we start (and only those we kill), the records tasks write, waiting."""
import itertools
import os
import re
import signal
import subprocess
import sys
import time

import pika

from taskqueue.host.config import AmqpSettings
from taskqueue.protocol.topology import queue_arguments

HOST, PORT = "127.0.0.1", 5672
BIN = os.path.dirname(sys.executable)
BENCH = os.path.dirname(os.path.abspath(__file__))
_vhost_numbers = itertools.count()


class BenchError(Exception):
    """A measurement could not complete (timeout, dead process): reported, not retried."""


def wait_until(predicate, timeout, what, interval=0.02):
    """Poll `predicate` until truthy; raise BenchError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def rabbitmqctl(*args):
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


class Vhost:
    """A fresh vhost per measurement, so no queue of an earlier run (or of a peer) interferes."""

    def __init__(self, label):
        self.name = f"tqbench-{os.getpid()}-{next(_vhost_numbers)}-{label}"

    def __enter__(self):
        rabbitmqctl("add_vhost", self.name)
        rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        return self

    def __exit__(self, *exc):
        rabbitmqctl("delete_vhost", self.name)

    @property
    def url(self):
        return f"amqp://guest:guest@{HOST}:{PORT}/{self.name}"


class Client:
    """A blocking pika client: declare as taskqueue does, publish, count."""

    def __init__(self, vhost, settings=None):
        self.vhost = vhost
        self.settings = settings or AmqpSettings()
        self.connection = pika.BlockingConnection(pika.ConnectionParameters(
            HOST, PORT, virtual_host=vhost, credentials=pika.PlainCredentials("guest", "guest")))
        self.channel = self.connection.channel()

    def declare(self, queue):
        self.channel.queue_declare(queue, durable=True,
                                   arguments=queue_arguments(queue, self.settings))

    def publish(self, queue, body, **props):
        """Persistent, without a confirm (as celery and dramatiq publish by default)."""
        props.setdefault("delivery_mode", 2)
        self.channel.basic_publish("", queue, body, pika.BasicProperties(**props))

    def counts(self, queue):
        """(messages ready, consumers), or None while `queue` does not exist."""
        try:
            frame = self.channel.queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            self.channel = self.connection.channel()
            return None
        return frame.method.message_count, frame.method.consumer_count

    def exchange_exists(self, exchange):
        try:
            self.channel.exchange_declare(exchange, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            self.channel = self.connection.channel()
            return False
        return True

    def close(self):
        """Close, if the broker has not already dropped the connection (its vhost deleted)."""
        try:
            if self.connection.is_open:
                self.connection.close()
        except pika.exceptions.AMQPError:
            pass


class Proc:
    """A process we started, in its own session, with its output in a log file."""

    def __init__(self, argv, log_path, env=None, cwd=None):
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.started = time.monotonic()
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, **(env or {})}, cwd=cwd,
                                        start_new_session=True)
        self.pid = self.process.pid

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def check_alive(self):
        if self.process.poll() is not None:
            raise BenchError(f"{self.process.args[:3]} exited {self.process.returncode}:\n"
                             f"{self.log()[-2000:]}")

    def stop(self, timeout=30):
        """SIGTERM our process group (a peer's children too), then SIGKILL it if it lingers."""
        if self.process.poll() is None:
            os.killpg(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)  # stray children of our own group only
        except ProcessLookupError:
            pass
        self.process.wait(10)
        self._log.close()


def taskqueue(command, vhost, body, workdir, queue_type="quorum", env=None, amqp=""):
    """Start `taskqueue COMMAND` with a config on `vhost`; `body` holds the other sections,
    `amqp` more lines of [amqp] (`events: no`)."""
    path = os.path.join(workdir, f"{command}-{vhost}.ini")
    with open(path, "w") as f:
        f.write(f"{body.rstrip()}\n\n[amqp]\nhost: {HOST}\nport: {PORT}\nvhost: {vhost}\n"
                f"queue_type: {queue_type}\n{amqp}")
    return Proc([os.path.join(BIN, "taskqueue"), command, "--config", path, "--log", "stderr"],
                path.replace(".ini", ".log"), env=env)


def worker_pids(log, worker_type="bench"):
    """Pids of the `worker_type` children a supervisor's log says it started."""
    return [int(pid) for pid in re.findall(rf"{worker_type}#\d+ pid=(\d+) STARTING -> RUNNING", log)]


def cpu_seconds(pids):
    """{pid: utime + stime in seconds} of the live processes among `pids`."""
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def cpu_used(before, after):
    """CPU seconds used between two cpu_seconds() readings by the processes in both."""
    return sum(after[pid] - before[pid] for pid in before if pid in after)


def session_pids(sid):
    """Every live process of session `sid` (a Proc and all its children)."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[3]) == sid:
                        pids.append(int(name))
            except (FileNotFoundError, ValueError, IndexError):
                continue
    return pids


def broker_pids():
    """The pid of the broker listening on PORT (never another node a test started)."""
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{PORT}"], capture_output=True,
                         text=True).stdout
    return sorted({int(pid) for pid in re.findall(r"pid=(\d+)", out)})


def record_dir(workdir, label):
    path = os.path.join(workdir, f"records-{label}-{next(_vhost_numbers)}")
    os.mkdir(path)
    os.chmod(path, 0o1777)
    return path


def records(path):
    """{task id: start time} from every `.rec` file in `path` (torn last lines skipped)."""
    out = {}
    for name in os.listdir(path):
        with open(os.path.join(path, name)) as f:
            for line in f.read().split("\n"):
                parts = line.split()
                if len(parts) == 2:
                    out[parts[0]] = float(parts[1])
    return out


def count_records(path):
    total = 0
    for name in os.listdir(path):
        with open(os.path.join(path, name), "rb") as f:
            total += f.read().count(b"\n")
    return total
