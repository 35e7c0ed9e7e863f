"""Never lose a task over TLS: 2 000 tasks while the broker's TLS port goes away.

A RabbitMQ node of the module's own with a TLS listener (tests/nodes.py); the
pool and `submit --file` talk to it over TLS only, verifying it against the
test's CA. The node is restarted while the workers take tasks: every
connection breaks, the TLS port is closed for the restart, and every child
reconnects, with a new handshake, once it is back.
"""
import os
import shutil
import subprocess
import threading
import time

import pytest

import nodes
from accounting import Ledger, window_bound
from figures import FIGURES
from support import TASKQUEUE, Broker, wait_for
from test_faults import WORKERS, completions, marker_config, queues_idle

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def certs():
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command makes the test certificates: apt-get install openssl")
    with nodes.certificates("tq-tlsfaults-certs-") as path:
        yield path


@pytest.fixture(scope="module")
def tls_node(certs):
    if os.getuid() != 0:
        pytest.skip("starting a RabbitMQ node as the rabbitmq user needs root")
    with nodes.running_tls_node(certs, "tqtlsfaults") as node:
        yield node


# The shared fixtures (tests/conftest.py), pointed at this module's node, so
# that start_pool does not start the suite's other node for nothing.
@pytest.fixture(scope="module")
def vhost():
    return "/"


@pytest.fixture(scope="module")
def amqp_port(tls_node):
    return tls_node.port


class StallWatch:
    """Samples how many tasks are completed; the longest time no new one came,
    from the first completion until `stop()`."""

    def __init__(self, record_dir):
        self.record_dir = record_dir
        self.longest = 0.0
        self.count = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self):
        last_change = None
        while not self._done.wait(0.05):
            count = sum(completions(self.record_dir).values())
            now = time.monotonic()
            if count != self.count:
                if last_change is not None:
                    self.longest = max(self.longest, now - last_change)
                last_change, self.count = now, count

    def stop(self):
        self._done.set()
        self._thread.join(10)


def test_2000_tasks_over_tls_survive_a_restart_of_the_brokers_tls_port(
        tls_node, certs, start_pool, record_dir, workdir):
    total = 2000
    ids = [f"tls{n:04d}" for n in range(total)]
    amqp = (f"[amqp]\nhost: localhost\nport: {tls_node.tls_port}\ntls: yes\n"
            f"tls_ca_file: {os.path.join(certs, 'ca.pem')}\nheartbeat: 5\n")
    pool = start_pool(marker_config(record_dir, WORKERS) + "\n" + amqp, raw=True)
    # The test's own eyes on the queues: the node's plaintext port.
    broker = Broker("/", tls_node.port)
    wait_for(lambda: broker.counts("worker_marker")[1] == 4, 60,
             lambda: f"4 workers consuming over TLS\n{pool.log()[-3000:]}")
    connections = tls_node.ctl("list_connections", "ssl", "name")
    assert connections.count("true") >= 5, connections   # the dispatcher and 4 workers, all TLS
    # Given 2 000 tasks submitted over TLS by the command line's bulk submit
    tasks = os.path.join(workdir, "tasks.jsonl")
    with open(tasks, "w") as f:
        f.write("".join(f'{{"id": "{task_id}", "sleep": 0.01}}\n' for task_id in ids))
    submit_config = os.path.join(workdir, "submit.ini")
    with open(submit_config, "w") as f:
        f.write(amqp)
    started = time.monotonic()
    watch = StallWatch(record_dir)
    out = subprocess.run([TASKQUEUE, "submit", "--config", submit_config, "--file", tasks, "marker"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    # When the node restarts while the workers take them (a third done)
    wait_for(lambda: len(completions(record_dir)) >= total // 3, 300,
             lambda: f"{total // 3} tasks done before the restart\n{pool.log()[-3000:]}",
             interval=0.05)
    broker.close()
    before_restart = len(completions(record_dir))
    restart_started = time.monotonic()
    tls_node.restart()
    restart_seconds = time.monotonic() - restart_started
    broker.connect()
    # Then every task is completed at least once, none is dead-lettered, and only what the
    # restart took from the dispatcher and the workers in flight ran twice at most
    ledger = Ledger(ids, record_dir).settle(broker, 600, idle=lambda: queues_idle(tls_node))
    elapsed = time.monotonic() - started
    watch.stop()
    done = ledger.completions()
    most_extra = window_bound(workers=WORKERS, dispatchers=1)
    FIGURES["2000 tasks over TLS, the broker restarted"] = {
        **ledger.figures(done),
        "duplicate outcomes allowed": most_extra,
        "completed before the restart": before_restart,
        "broker restart (s)": round(restart_seconds, 1),
        "longest stall (s)": round(watch.longest, 1),
        "seconds": round(elapsed, 1),
    }
    problems = ledger.problems(rules=(), most_extra=most_extra, done=done)
    assert not problems, "\n".join(problems) + f"\n{pool.log()[-3000:]}"
    assert "Traceback" not in pool.log()
    # the children came back over TLS: the dispatcher and the 4 workers, again
    wait_for(lambda: tls_node.ctl("list_connections", "ssl").count("true") >= 5, 60,
             "5 TLS connections after the restart")
    broker.close()
    assert pool.stop() == 0
