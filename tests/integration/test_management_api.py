"""The unacked gauge from RabbitMQ's real management API, compared with rabbitmqctl.

A RabbitMQ node of the module's own (other ports, own directories: tests/nodes.py)
with the rabbitmq_management plugin; the shared broker on 5672 keeps its plugins.
Its statistics are collected every second (RabbitMQ's default: 5 s), the interval
at which the API's unacked figure follows the queue. The pool's vhost has a space
and a slash in its name, which the API's URL must quote.
"""
import json
import os
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request

import pytest

import nodes
from support import recorder_config, wait_for
from test_metrics import scrape

#: The queues a pool of the recorder alone reports on.
REPORTED = ("taskqueue", "worker_recorder", "worker_recorder+high", "taskqueue_dead")
#: The recorder's processes, and the deliveries each holds at once.
PROCESSES, PREFETCH = 2, 3
#: Tasks submitted: PROCESSES * PREFETCH of them held unacked, the rest ready.
TASKS = 10
#: A user of the node's whose password only the node knows (for the tests that log in).
USER, PASSWORD = "tqmgmt", "right-" + os.urandom(6).hex()

#: A node of its own and the broker's API: what it measures is the broker's and the
#: standard library's, once per broker is enough (pytest.ini).
pytestmark = [pytest.mark.timeout(180), pytest.mark.once_per_broker]


@pytest.fixture(scope="module")
def node():
    if os.getuid() != 0:
        pytest.skip("starting a RabbitMQ node of the test's own (as user rabbitmq) needs root")
    with nodes.running_node(lambda base: nodes.management_node(base, "tqmgmt"), "tqmgmt") as n:
        yield n


# The shared fixtures (tests/conftest.py), pointed at this node.
@pytest.fixture(scope="module")
def vhost(node):
    name = "tq mgmt/test"
    node.ctl("add_vhost", name)
    node.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    node.ctl("add_user", USER, PASSWORD)
    node.ctl("set_permissions", "-p", name, USER, ".*", ".*", ".*")
    return name


@pytest.fixture(scope="module")
def amqp_port(node):
    return node.port


@pytest.fixture(scope="module")
def broker_port(node):
    return node.port


def list_queues(node, vhost):
    """{queue: (ready, unacked, consumers)} from rabbitmqctl."""
    out = node.ctl("list_queues", "-p", vhost, "--no-table-headers",
                   "name", "messages_ready", "messages_unacknowledged", "consumers")
    rows = (line.split("\t") for line in out.splitlines() if line.strip())
    return {name: tuple(map(int, counts)) for name, *counts in rows}


def gauges(port):
    """{queue: (ready, unacked, consumers)} of the queues with all three gauges, and
    taskqueue_management_up, from one scrape."""
    names = ("taskqueue_queue_messages_ready", "taskqueue_queue_messages_unacked",
             "taskqueue_queue_consumers")
    samples = scrape(port)
    per_queue = {}
    for (name, labels), value in samples.items():
        if name in names:
            per_queue.setdefault(dict(labels)["queue"], {})[name] = int(value)
    counts = {queue: tuple(found[name] for name in names)
              for queue, found in per_queue.items() if len(found) == len(names)}
    return counts, samples.get(("taskqueue_management_up", frozenset()))


def metrics_config(records, node, port, extra=""):
    return recorder_config(records, processes=PROCESSES, extra=f"prefetch: {PREFETCH}\n") + (
        f"\n[metrics]\nport: {port}\n"
        f"management_url: http://127.0.0.1:{node.management_port}/\n{extra}")


def management_refusal(pool):
    """The first reason the pool's log gives for the management API not answering."""
    return pool.wait_log(r"queue gauges: the management API did not answer: (.*)")[0]


def api_queue(node, vhost, queue, columns):
    """The API's JSON answer about `queue` (a single-queue GET, as the gauges ask), of
    `columns` alone, asked as guest."""
    url = (f"http://127.0.0.1:{node.management_port}/api/queues/"
           f"{urllib.parse.quote(vhost, safe='')}/{urllib.parse.quote(queue, safe='')}"
           f"?columns={','.join(columns)}")
    request = urllib.request.Request(url, headers={"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def api_shows(node, vhost, queue, ready, unacked, consumers):
    """Whether the API's statistics of `queue` have caught up with these figures."""
    columns = ("messages_ready", "messages_unacknowledged", "consumers")
    try:
        answer = api_queue(node, vhost, queue, ("name", *columns))
    except urllib.error.HTTPError:   # 404: not declared yet
        return False
    return tuple(answer.get(column) for column in columns) == (ready, unacked, consumers)


def test_unacked_ready_and_consumers_match_rabbitmqctl(
        node, vhost, broker, start_pool, records, workdir):
    # Given a pool of 2 recorder processes holding 3 deliveries each, with metrics
    # and the node's management API
    port = nodes.free_port()
    pool = start_pool(metrics_config(records, node, port))
    pool.wait_log(rf"metrics on http://127.0.0.1:{port}/metrics")
    # When 10 tasks wait at a gate (6 held unacked, 4 ready) and 2 dead letters arrive
    gate = os.path.join(workdir, "gate")
    for n in range(TASKS):
        broker.submit("recorder", {"id": f"t{n}", "gate": gate})
    for n in range(2):
        broker.publish_raw(b"{}", queue="taskqueue_dead")
    held = PROCESSES * PREFETCH

    # Then the gauges say what rabbitmqctl says
    def agree(expected_worker):
        listed = list_queues(node, vhost)
        counts, up = gauges(port)
        expected = {queue: listed[queue] for queue in REPORTED if queue in listed}
        return (up == 1 and counts == expected and expected["worker_recorder"] == expected_worker
                and expected["taskqueue_dead"] == (2, 0, 0))

    def disagreement():
        return f"gauges {gauges(port)} and rabbitmqctl {list_queues(node, vhost)}"
    # (once the API's statistics, collected every second, have caught up: a reading
    # is kept 5 s, and one taken before would only delay the test)
    wait_for(lambda: api_shows(node, vhost, "worker_recorder", TASKS - held, held, PROCESSES),
             30, lambda: f"the API's figures of worker_recorder, not {disagreement()}")
    wait_for(lambda: agree((TASKS - held, held, PROCESSES)), 20, disagreement)
    # And the API answers the single-queue GET with the columns asked alone (3.10 and 4.x)
    assert api_queue(node, vhost, "worker_recorder", ("name", "messages_unacknowledged")) == {
        "name": "worker_recorder", "messages_unacknowledged": held}

    # When the gate opens and the tasks are done, the unacked gauge follows down to 0
    open(gate, "w").close()
    wait_for(lambda: len(records.ids()) == TASKS, 30, lambda: f"{TASKS} done, not {records.ids()}")
    wait_for(lambda: api_shows(node, vhost, "worker_recorder", 0, 0, PROCESSES), 30,
             lambda: f"the API's figures of worker_recorder, not {disagreement()}")
    wait_for(lambda: agree((0, 0, PROCESSES)), 20, disagreement)


def test_a_wrong_password_gives_management_up_0_and_a_log_line_without_it(
        node, vhost, start_pool, records):
    # Given a pool whose [amqp] password is wrong (for AMQP and for the API alike)
    port = nodes.free_port()
    wrong = "wrong-" + os.urandom(6).hex()
    pool = start_pool(metrics_config(records, node, port),
                      amqp_extra=f"user: {USER}\npassword: {wrong}\n")
    pool.wait_log(rf"metrics on http://127.0.0.1:{port}/metrics")
    # When scraped: management_up 0, no unacked gauge
    samples = scrape(port)
    assert samples[("taskqueue_management_up", frozenset())] == 0
    assert not any(name == "taskqueue_queue_messages_unacked" for name, _ in samples)
    # Then the log says the API refused the login, and never shows the password
    # (RabbitMQ's reason: "Login failed" in 3.10, "Not_Authorized" in 4.0)
    why = management_refusal(pool)
    assert re.fullmatch(rf"http://127\.0\.0\.1:{node.management_port}: queue 'taskqueue': "
                        r"HTTP 401 Unauthorized: (Login failed|Not_Authorized) "
                        r"\(check \[amqp\] user and password, .*\)", why), why
    assert wrong not in pool.log()


def test_a_user_without_a_management_tag_then_with_one(node, vhost, start_pool, records):
    # Given a pool whose user may use the vhost but has no tag for the management API
    port = nodes.free_port()
    node.ctl("set_user_tags", USER)
    pool = start_pool(metrics_config(records, node, port),
                      amqp_extra=f"user: {USER}\npassword: {PASSWORD}\n")
    pool.wait_log(rf"metrics on http://127.0.0.1:{port}/metrics")
    # When scraped: the broker answers, the API refuses, and the log says why
    wait_for(lambda: scrape(port).get(("taskqueue_broker_up", frozenset())) == 1, 30,
             "broker_up 1")
    assert gauges(port)[1] == 0
    why = management_refusal(pool)
    assert re.search(r"HTTP 401 Unauthorized: Not management user \(check .*the user's tag",
                     why), why
    assert PASSWORD not in pool.log()
    # When the user is given the `management` tag (enough for the vhosts it may use)
    node.ctl("set_user_tags", USER, "management")
    # Then a later scrape has the API up and the unacked gauges (after the reading's 5 s)
    wait_for(lambda: gauges(port)[1] == 1 and "worker_recorder" in gauges(port)[0], 30,
             lambda: f"the management API up in {gauges(port)}")
    pool.wait_log("queue gauges: the management API answers again")


def test_a_user_without_the_vhost_is_told_so(node, vhost, start_pool, records):
    # Given a user the API knows, with the tag, but without permissions on the pool's vhost
    port = nodes.free_port()
    node.ctl("add_user", "tqmgmt-novhost", PASSWORD)
    node.ctl("set_user_tags", "tqmgmt-novhost", "management")
    try:
        pool = start_pool(metrics_config(records, node, port),
                          amqp_extra=f"user: tqmgmt-novhost\npassword: {PASSWORD}\n")
        pool.wait_log(rf"metrics on http://127.0.0.1:{port}/metrics")
        # When scraped: the API is down for it, and the log names the vhost as the reason
        assert gauges(port)[1] == 0
        why = management_refusal(pool)
        assert re.search(r"HTTP 401 Unauthorized: User not authorised to access virtual host "
                         r"\(check .*its permissions on \[amqp\] vhost\)", why), why
    finally:
        subprocess.run(["rabbitmqctl", "-q", "-n", node.name, "delete_user", "tqmgmt-novhost"],
                       capture_output=True, timeout=60)
