"""7. End-to-end over TLS beside plaintext, on one RabbitMQ node of the bench's own.

The local broker on 5672 has no TLS listener (and the bench never reconfigures
it), so each repetition starts a node with one (tests/nodes.py's tls_node, with
the certificates its make_certificates makes) and runs the e2e shape of
m_e2e.py twice against it: `taskqueue run` (1 dispatcher, 2 `bench` workers,
quorum queues) and one client publishing N tasks as fast as it can
(persistent, no confirm), once everything over amqps:// (the pool, and the
client verifying the node against the test CA) and once over plaintext to
the SAME node, in a vhost each. The only difference between the two runs is
TLS; their order alternates between repetitions so that neither always meets
a warmer node. The TLS run's `taskqueue status`, taken once its tasks are
done, before the pool stops, is kept in the log directory as tls-status.txt.

    python m_tls.py send PORT VHOST CA_FILE|- N PREFIX
is the publishing client (a process of its own, as peers/send.py is for m_e2e).
"""
import itertools
import json
import os
import re
import resource
import shutil
import ssl
import subprocess
import sys
import tempfile
import time

import pika

from common import BIN, BenchError, Proc, count_records, cpu_seconds, cpu_used, record_dir, \
    records, session_pids, wait_until

TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
_repetitions = itertools.count()


def _nodes():
    """tests/nodes.py: the one place that knows how to start a node with a TLS listener."""
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    import nodes
    return nodes


def connect(port, vhost, ca_file=None):
    """A pika BlockingConnection to the node: TLS verified against `ca_file` (name
    localhost, as taskqueue checks it) when given, else plaintext."""
    ssl_options = None
    if ca_file:
        ssl_options = pika.SSLOptions(ssl.create_default_context(cafile=ca_file), "localhost")
    return pika.BlockingConnection(pika.ConnectionParameters(
        "localhost" if ca_file else "127.0.0.1", port, virtual_host=vhost, ssl_options=ssl_options,
        credentials=pika.PlainCredentials("guest", "guest")))


def counts(channel, queue):
    """(messages ready, consumers) of `queue`; None while it does not exist."""
    try:
        frame = channel.queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker:
        return None
    return frame.method.message_count, frame.method.consumer_count


def consuming(connection, proc):
    proc.check_alive()
    channel = connection.channel()    # a failed passive declare closes it
    try:
        wanted = (("taskqueue", 1), ("worker_bench", 2))
        return all((counts(channel, q) or (0, 0))[1] >= n for q, n in wanted)
    finally:
        if channel.is_open:
            channel.close()


def start_pool(workdir, node, vhost, records_path, certs, tls):
    """`taskqueue run` on `vhost` of `node`, over TLS or plaintext; (Proc, config path)."""
    if tls:
        amqp = (f"host: localhost\nport: {node.tls_port}\ntls: yes\n"
                f"tls_ca_file: {os.path.join(certs, 'ca.pem')}\n")
    else:
        amqp = f"host: 127.0.0.1\nport: {node.port}\n"
    status_dir = os.path.join(workdir, f"status-{vhost}")
    os.mkdir(status_dir)
    path = os.path.join(workdir, f"run-{vhost}.ini")
    with open(path, "w") as f:
        f.write(f"[DEFAULT]\nworkers: 0\n\n[bench]\nworkers: 2\nrecord_dir: {records_path}\n\n"
                f"[supervisor]\nstatus_dir: {status_dir}\n\n"
                f"[amqp]\n{amqp}vhost: {vhost}\nqueue_type: quorum\n")
    os.chmod(path, 0o600)
    return Proc([os.path.join(BIN, "taskqueue"), "run", "--config", path, "--log", "stderr"],
                path.replace(".ini", ".log")), path


def run_one(workdir, node, certs, tls, count, rep):
    """One e2e run on `node`: (tasks/s, publish rate, CPU us per task of the pool, the
    node, the client), as m_e2e.run_one measures them."""
    label = "tls" if tls else "plain"
    vhost = f"tqbench-{os.getpid()}-{rep}-{label}"
    node.ctl("add_vhost", vhost)
    node.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    path = record_dir(workdir, f"tlsnode-{label}")
    proc, config = start_pool(workdir, node, vhost, path, certs, tls)
    eyes = connect(node.port, vhost)      # the bench's own look at the queues: plaintext
    try:
        wait_until(lambda: consuming(eyes, proc), 60, f"{label} pool consuming")
        own, broker = session_pids(proc.pid), _listener_pids(node.port)
        cpu_before = cpu_seconds(own), cpu_seconds(broker), _children_cpu()
        ca_file = os.path.join(certs, "ca.pem") if tls else "-"
        sender = subprocess.Popen([sys.executable, os.path.abspath(__file__), "send",
                                   str(node.tls_port if tls else node.port), vhost, ca_file,
                                   str(count), label],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            line = sender.stdout.readline()     # once it has published them all
            if not line:
                raise BenchError(f"{label}: the sender exited {sender.wait()} before "
                                 "publishing them all")
            times = json.loads(line)
            wait_until(lambda: count_records(path) >= count or proc.check_alive(),
                       max(120, count / 20), f"{count} {label} tasks done", interval=0.05)
        finally:
            sender.stdin.close()    # now it may close its connection
            sender.wait(timeout=60)
        cpu_after = cpu_seconds(own), cpu_seconds(broker), _children_cpu()
        if tls:
            _save_status(workdir, config)
    finally:
        try:
            proc.stop()
        finally:
            if eyes.is_open:
                eyes.close()
            node.ctl("delete_vhost", vhost)
    last = max(records(path).values())
    own_cpu, broker_cpu = (cpu_used(b, a) for b, a in zip(cpu_before[:2], cpu_after[:2]))
    cpu = [seconds * 1e6 / count for seconds in (own_cpu, broker_cpu, cpu_after[2] - cpu_before[2])]
    return count / (last - times["start"]), count / (times["end"] - times["start"]), cpu


def _save_status(workdir, config):
    out = subprocess.run([os.path.join(BIN, "taskqueue"), "status", "--config", config],
                         capture_output=True, text=True, timeout=60)
    with open(os.path.join(workdir, "tls-status.txt"), "w") as f:
        f.write(f"# taskqueue status --config {config}   (exit status {out.returncode})\n")
        f.write(out.stdout + out.stderr)


def _listener_pids(port):
    """The node's pid (the process listening on its plaintext port)."""
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True,
                         text=True).stdout
    pids = sorted({int(pid) for pid in re.findall(r"pid=(\d+)", out)})
    if not pids:
        raise BenchError(f"no process listens on port {port}")
    return pids


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(workdir, args):
    if os.getuid() != 0 or shutil.which("openssl") is None:
        raise BenchError("the tls measurement needs root (it starts a RabbitMQ node as user "
                         "rabbitmq) and the openssl command (its certificates)")
    nodes = _nodes()
    rep = next(_repetitions)
    # Under /tmp, not the 0700 workdir: user rabbitmq must reach the node's files.
    base = tempfile.mkdtemp(prefix="taskqueue-bench-tls-")
    certs, node_dir = os.path.join(base, "certs"), os.path.join(base, "node")
    os.mkdir(certs)
    os.chmod(base, 0o755)
    nodes.make_certificates(certs)
    node = nodes.tls_node(node_dir, certs, "tqbenchtls")
    out = {}
    try:
        node.start()
        nodes.wait_until_listening(node.port, 60)
        for tls in ((False, True) if rep % 2 == 0 else (True, False)):
            name = "taskqueue tls" if tls else "taskqueue tls-node plaintext"
            rate, publish_rate, (own, broker, sender) = run_one(
                workdir, node, certs, tls, args.tasks, rep)
            out[f"e2e {name}"] = rate
            out[f"e2e {name} (publish rate)"] = publish_rate
            out[f"cpu/task {name}: own processes"] = own
            out[f"cpu/task {name}: broker"] = broker
            out[f"cpu/task {name}: client"] = sender
        # A ratio of this repetition's two runs (report.RATIOS' rule), made here so
        # that this measurement needs nothing in report.py.
        out["ratio e2e taskqueue tls / plaintext"] = (
            out["e2e taskqueue tls"] / out["e2e taskqueue tls-node plaintext"])
    finally:
        node.stop()
        shutil.copytree(os.path.join(node_dir, "log"), os.path.join(workdir, f"tls-node-log-{rep}"))
        shutil.rmtree(base, ignore_errors=True)
    return out


def send(port, vhost, ca_file, count, prefix):
    """Publish `count` bench tasks to `taskqueue` as fast as one client can (persistent,
    no confirm, as peers/send.py); print {"start", "end"} (time.time()), then keep the
    connection open until stdin closes (send.py's protocol)."""
    connection = connect(int(port), vhost, None if ca_file == "-" else ca_file)
    channel = connection.channel()
    props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
    start = time.time()
    for n in range(int(count)):
        body = json.dumps({"worker_type": "bench", "workitem": {"id": f"{prefix}{n}"}}).encode()
        channel.basic_publish("", "taskqueue", body, props)
    end = time.time()
    print(json.dumps({"start": start, "end": end}), flush=True)
    # Open until the bench has seen every task, as peers/send.py: unconfirmed publishes
    # the broker has not yet put in the quorum queue may go with their channel (closed at
    # once, twice on 2026-12-06: the last 8, then the last 50 of 10 000 never reached the
    # dispatcher, every queue empty, and the run waited 500 s for them).
    sys.stdin.read()
    connection.close()


if __name__ == "__main__" and sys.argv[1:2] == ["send"]:
    send(*sys.argv[2:])
