"""The shipped alert rules and Grafana dashboard (contrib/monitoring/), checked with
Debian's promtool and run against a real Prometheus that scrapes real pools.

Every expression must evaluate, and must name only series the pools export: each
metric selector in it (`name{labels}`) returns series. The dashboard's expressions
and the alerts whose condition the test provokes (tasks with no consumer, dead letters
arriving, a broker that does not answer) must return series themselves.
"""
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest

from nodes import free_port, free_ports, wait_until_listening
from support import config_text, recorder_config, wait_for

pytestmark = pytest.mark.timeout(240)

MONITORING = os.path.join(os.path.dirname(__file__), "..", "..", "contrib", "monitoring")
RULES = os.path.join(MONITORING, "taskqueue-alerts.yml")
DASHBOARD = os.path.join(MONITORING, "taskqueue-dashboard.json")
#: A metric selector of an expression: a name of ours and its label matchers, if any.
SELECTOR = re.compile(r"\btaskqueue_[a-z_]+(?:\{[^}]*\})?")
#: Alerts the test provokes: their whole expression must return series.
PROVOKED = ("TaskqueueNoConsumer", "TaskqueueDeadLettersArriving", "TaskqueueBrokerUnreachable")


def tool(name):
    path = shutil.which(name)
    if path is None:
        if os.environ.get("TASKQUEUE_TRIXIE_RUN"):
            pytest.skip(f"{name} is not installed in the trixie root (tests/trixie/make-root "
                        "installs no prometheus); the host stacks run this test")
        pytest.fail(f"{name} not found: run-tests installs Debian's prometheus package")
    return path


def test_promtool_checks_the_shipped_rules():
    out = subprocess.run([tool("promtool"), "check", "rules", RULES], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 6 rules found" in out.stdout


def rule_expressions():
    """{alert name: expression} of the rules file, as promtool reads it (YAML via JSON)."""
    out = subprocess.run([tool("promtool"), "check", "rules", "--lint=none", RULES],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # No YAML parser in the venvs: the rules are read from the file's `alert:`/`expr:` lines.
    text = open(RULES).read()
    found = {}
    for block in re.split(r"\n      - alert: ", text)[1:]:
        name = block.split("\n", 1)[0].strip()
        expr = re.search(r"expr: (?:>-\n)?((?:.+\n)+?)        \w", block).group(1)
        found[name] = " ".join(expr.split())
    assert len(found) == 6, found
    return found


def dashboard_expressions():
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    assert dashboard["templating"]["list"][0]["type"] == "datasource"
    return {panel["title"]: target["expr"]
            for panel in dashboard["panels"] for target in panel["targets"]}


class FakeManagementAPI(http.server.BaseHTTPRequestHandler):
    """RabbitMQ's /api/queues/<vhost>/<queue>, answering 7 unacked for every queue (the
    test broker has no management plugin, and the shared broker's plugins stay as they are)."""

    def do_GET(self):
        queue = urllib.parse.unquote(self.path.split("?")[0].rsplit("/", 1)[-1])
        body = json.dumps({"name": queue, "messages_unacknowledged": 7}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def management_api():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeManagementAPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def ready(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture
def prometheus(workdir):
    """start(targets): a Prometheus of the test's own on a loopback port, scraping
    `targets` every second, its data in the test's directory; its query function."""
    started = []

    def start(targets):
        port = free_port()
        config = os.path.join(workdir, "prometheus.yml")
        with open(config, "w") as f:
            json.dump({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                       "scrape_configs": [{"job_name": "taskqueue", "static_configs": [
                           {"targets": targets}]}]}, f)   # JSON is YAML
        log = open(os.path.join(workdir, "prometheus.log"), "w")
        started.append(subprocess.Popen(
            [tool("prometheus"), f"--config.file={config}",
             f"--storage.tsdb.path={os.path.join(workdir, 'prometheus-data')}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log))
        wait_until_listening(port, 60)
        # Listening is not ready: its API answers 503 while its storage starts (seen
        # once on the trixie stack under load).
        wait_for(lambda: ready(port), 60, "Prometheus ready (/-/ready)")

        def query(expr):
            url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode(
                {"query": expr})
            with urllib.request.urlopen(url, timeout=10) as response:
                answer = json.load(response)
            assert answer["status"] == "success", (expr, answer)
            return answer["data"]["result"]
        return query
    yield start
    for process in started:   # only the Prometheus this test started
        process.terminate()
        process.wait(timeout=30)


def test_every_expression_of_the_rules_and_dashboard_returns_series(
        broker, start_pool, records, vhost, prometheus, management_api):
    # Given a worker pool (no dispatcher: tasks for it wait in `taskqueue`, unconsumed)
    # with the management API's unacked counts, and a pool whose broker does not answer
    # (three different ports: two pools' metrics, and a broker port nothing listens on)
    port, unreachable_port, no_broker_port = free_ports(3)
    pool = start_pool(recorder_config(records) + f"\n[metrics]\nport: {port}\n"
                      f"management_url: {management_api}\n", command="workerpool")
    start_pool(config_text(vhost, recorder_config(records) +
                           f"\n[metrics]\nport: {unreachable_port}\n", port=no_broker_port),
               command="workerpool", raw=True)
    pool.wait_log(rf"metrics on http://127.0.0.1:{port}/metrics")
    wait_for(lambda: broker.counts("worker_recorder")[1] == 1, 30, "the recorder consuming")
    # And tasks done (durations), tasks waiting in taskqueue with no consumer
    for n in range(3):
        broker.submit_one_hop("recorder", {"id": f"done-{n}"}, message_id=f"done-{n}")
        broker.submit("recorder", {"id": f"waits-{n}"})
    wait_for(lambda: len(records.ids()) == 3, 30, lambda: f"3 tasks done, not {records.ids()}")
    query = prometheus([f"127.0.0.1:{port}", f"127.0.0.1:{unreachable_port}"])
    wait_for(lambda: len(query("taskqueue_queue_messages_ready")) >= 3, 60,
             "Prometheus scraping the queue gauges")
    # When dead letters arrive after Prometheus saw none (the worker declared taskqueue_dead)
    wait_for(lambda: query('taskqueue_queue_messages_ready{queue="taskqueue_dead"}'), 30,
             "taskqueue_dead scraped")
    wait_for(lambda: query('count_over_time(taskqueue_queue_messages_ready'
                           '{queue="taskqueue_dead"}[1m]) >= 2'), 30, "two samples, for delta()")
    for n in range(2):
        broker.publish_raw(b"{}", queue="taskqueue_dead")
    # Then every selector of every expression returns series; every dashboard expression
    # and every provoked alert's expression returns series too
    rules, panels = rule_expressions(), dashboard_expressions()
    selectors = {s for expr in [*rules.values(), *panels.values()] for s in SELECTOR.findall(expr)}
    assert "taskqueue_queue_messages_unacked" in selectors and len(selectors) >= 10
    must_return = {**{f"selector {s}": s for s in selectors},
                   **{f"panel {t!r}": e for t, e in panels.items()},
                   **{f"alert {name}": rules[name] for name in PROVOKED}}
    for expr in rules.values():
        query(expr)   # evaluates without an error

    def empty():
        return [what for what, expr in must_return.items() if not query(expr)]
    # (90 s: once, under the whole suite's load on the trixie stack, 60 s went by without
    # the unreachable pool's broker_up 0 in Prometheus; alone it takes seconds)
    wait_for(lambda: not empty(), 90, lambda: f"series for {empty()}; broker_up: "
             f"{query('taskqueue_broker_up')}")
