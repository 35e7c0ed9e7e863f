"""A 3-node RabbitMQ cluster of the tests' own: nodes, their CLI, joining, tearing down.

Each node has its own name, ports, data, logs, config and pid file, and runs as
the rabbitmq user with HOME=/var/lib/rabbitmq so all share the machine's Erlang
cookie, which clustering requires. A node may live in a network
namespace of the test's (clusternet.py): then its CLI runs there too, the node
has a long name with its cluster address (rabbit names need no resolver then),
and its own rabbitmq-env file keeps the machine's 127.0.0.1-only settings away.
The machine's broker is never touched: every command names its node.
"""
import json
import os
import shutil
import signal
import subprocess
import time

import clusternet

RABBIT_BIN = "/usr/lib/rabbitmq/bin"


#: The ends of the names of a taskqueue process's side connections (Session.side_session).
SIDE = (" events", " replies", " cancels", " events+cancels")

class ClusterNode:
    """One RabbitMQ node: `host:port` is where clients reach it."""

    def __init__(self, base, name, host, port, dist_port=None, netns=None, conf=(),
                 erl_args=""):
        self.base, self.name, self.host, self.port = base, name, host, port
        self.netns = netns
        self.longnames = netns is not None
        self.process = None
        for sub in ("mnesia", "log"):
            os.makedirs(os.path.join(base, sub))
        with open(os.path.join(base, "rabbitmq.conf"), "w") as f:
            # Its own config: the machine's listens on 127.0.0.1:5672.
            listen = f"{host}:{port}" if netns is None else str(port)
            f.write(f"listeners.tcp.1 = {listen}\n" + "".join(f"{line}\n" for line in conf))
        with open(os.path.join(base, "enabled_plugins"), "w") as f:
            f.write("[].\n")
        self.env = {"HOME": "/var/lib/rabbitmq", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                    "RABBITMQ_NODENAME": name,
                    "RABBITMQ_NODE_PORT": str(port),
                    "RABBITMQ_MNESIA_BASE": os.path.join(base, "mnesia"),
                    "RABBITMQ_LOG_BASE": os.path.join(base, "log"),
                    "RABBITMQ_PID_FILE": os.path.join(base, "beam.pid"),
                    "RABBITMQ_CONFIG_FILE": os.path.join(base, "rabbitmq.conf"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(base, "enabled_plugins")}
        if dist_port:
            self.env["RABBITMQ_DIST_PORT"] = str(dist_port)
        if netns is not None:
            # The machine's rabbitmq-env.conf binds epmd and distribution to
            # 127.0.0.1: a node in a namespace must be reachable on its address.
            env_file = os.path.join(base, "rabbitmq-env.conf")
            open(env_file, "w").close()
            self.env.update(RABBITMQ_CONF_ENV_FILE=env_file, RABBITMQ_USE_LONGNAME="true")
        if erl_args:
            self.env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] = erl_args
        for root, dirs, files in os.walk(base):
            for entry in [root] + [os.path.join(root, n) for n in dirs + files]:
                shutil.chown(entry, "rabbitmq", "rabbitmq")

    def __repr__(self):
        return self.name

    def _command(self, program, *args):
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return [*prefix, "runuser", "-u", "rabbitmq", "--", "env",
                *[f"{k}={v}" for k, v in self.env.items()], os.path.join(RABBIT_BIN, program), *args]

    def ctl(self, *args, check=True, timeout=120):
        """rabbitmqctl against this node; its stdout."""
        cli = ["-n", self.name] + (["-l"] if self.longnames else [])
        done = subprocess.run(self._command("rabbitmqctl", *cli, *args), capture_output=True,
                              text=True, timeout=timeout)
        if check and done.returncode:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.name}: rc {done.returncode}"
                               f"\n{done.stdout}{done.stderr}")
        return done.stdout

    def ctl_json(self, *args):
        return json.loads(self.ctl(*args, "--formatter", "json") or "null")

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None

    def start(self, timeout=120):
        with open(os.path.join(self.base, "server.out"), "a") as out:
            self.process = subprocess.Popen(self._command("rabbitmq-server"), stdout=out,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not clusternet.listening(self.host, self.port, self.netns):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start listening on {self.host}:{self.port}"
                                   f"\n{self.server_output()[-3000:]}")
            time.sleep(0.2)

    def server_output(self):
        try:
            with open(os.path.join(self.base, "server.out")) as f:
                return f.read()
        except OSError:
            return ""

    def beam_pid(self):
        try:
            with open(self.env["RABBITMQ_PID_FILE"]) as f:
                return int(f.read().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def stop(self, timeout=60):
        """A graceful stop (rabbitmqctl stop); killed by pid if it does not end in time."""
        if self.process is None:
            return
        try:
            self.ctl("stop", check=False, timeout=timeout)
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None

    def kill(self):
        pid = self.beam_pid()
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait(30)


class Cluster:
    """Three (or more) ClusterNodes joined into one cluster."""

    def __init__(self, nodes):
        self.nodes = nodes

    def start(self):
        for node in self.nodes:   # one at a time: booting is what the two cores spend
            node.start()
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.name)
            node.ctl("start_app")
        self.wait_running(len(self.nodes), 120)

    def running_nodes(self, via=None):
        """Names of the running nodes as `via` (default: the first running one) sees them."""
        via = via or next(n for n in self.nodes if n.running)
        status = via.ctl_json("cluster_status")
        return sorted(status.get("running_nodes", []))

    def wait_running(self, count, timeout, via=None):
        deadline = time.monotonic() + timeout
        while True:
            try:
                running = self.running_nodes(via)
                if len(running) == count:
                    return running
            except (RuntimeError, ValueError, subprocess.TimeoutExpired):
                running = "no answer"
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} running nodes expected after {timeout}s, saw {running}")
            time.sleep(1)

    def node_named(self, name):
        return next(n for n in self.nodes if n.name == name)

    def queues(self, vhost="/", via=None):
        """{queue name: {"type", "leader", "members"}} as a running node sees them."""
        via = via or next(n for n in self.nodes if n.running)
        rows = via.ctl_json("list_queues", "-p", vhost, "name", "type", "leader", "members")
        return {row["name"]: row for row in rows or []}

    def connections(self, via=None):
        """Every client connection but a process's side ones (SIDE: its task events and
        replies, which follow it to its node and settle no task): [(node, connection
        name)], the node told by the address and port the connection came in on (the
        broker's own view)."""
        via = via or next(n for n in self.nodes if n.running)
        rows = via.ctl_json("list_connections", "name", "client_properties")
        by_endpoint = {(n.host, n.port): n for n in self.nodes}
        out = []
        for row in rows or []:
            props = row.get("client_properties") or []
            if isinstance(props, list):   # the json formatter gives [[key, type, value], ...]
                props = {p[0]: p[-1] for p in props if isinstance(p, list) and p}
            # "peer:port -> address:port": where it came in (the `host` item may be a name)
            host, _, port = row["name"].split(" -> ")[-1].rpartition(":")
            name = props.get("connection_name", row["name"])
            if not str(name).endswith(SIDE):
                out.append((by_endpoint.get((host, int(port))), name))
        return out

    def spread(self, prefix="taskqueue", via=None):
        """{node name: connections} of taskqueue's own connections (named by it)."""
        counts = {n.name: 0 for n in self.nodes}
        for node, name in self.connections(via):
            if node is not None and str(name).startswith(prefix):
                counts[node.name] += 1
        return counts

    def stop(self):
        """Stop every node at once (each may take seconds); kill what does not stop."""
        stoppers = [subprocess.Popen(n._command("rabbitmqctl", "-n", n.name,
                                                *(["-l"] if n.longnames else []), "stop"),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    for n in self.nodes if n.running]
        for stopper in stoppers:
            try:
                stopper.wait(45)
            except subprocess.TimeoutExpired:
                stopper.kill()
                stopper.wait()
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(15)
                except subprocess.TimeoutExpired:
                    pass
                node.kill()
                node.process = None

    def from_peer(self, peer, via=None):
        """(connections, unacknowledged messages) of the clients at address `peer`."""
        via = via or next(n for n in self.nodes if n.running)
        rows = via.ctl_json("list_channels", "name", "messages_unacknowledged") or []
        mine = [row for row in rows if row["name"].startswith(f"{peer}:")]
        connections = {row["name"].rsplit(" (", 1)[0] for row in mine}
        return len(connections), sum(row["messages_unacknowledged"] for row in mine)

    def backlog(self, vhost="/", via=None):
        """{queue: (ready, unacknowledged)} as a running node sees them."""
        via = via or next(n for n in self.nodes if n.running)
        rows = via.ctl_json("list_queues", "-p", vhost, "name", "messages_ready",
                            "messages_unacknowledged") or []
        return {r["name"]: (r["messages_ready"], r["messages_unacknowledged"]) for r in rows}
