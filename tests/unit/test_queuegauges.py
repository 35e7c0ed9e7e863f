"""The queue gauges: the probe's answer read within bounds, the cache, their exposition
(queuegauges.py, metrics.py), and the management API's answers, hostile ones too
(management.py)."""
import http.server
import json
import re
import threading

import gevent
import pytest
from prometheus_client.parser import text_string_to_metric_families

from taskqueue import redact
from taskqueue.broker import management
from taskqueue.errors import TaskqueueError
from taskqueue.host.config import AmqpSettings
from taskqueue.protocol import delays
from taskqueue.supervision import metrics, queuegauges
from taskqueue.supervision.queuegauges import Reading, parse_answer
from test_metrics_text import supervisor

pytestmark = pytest.mark.timeout(10)
QUEUES = ("taskqueue", "worker_worker2", "taskqueue_dead")


def lines(*answers):
    return b"".join(json.dumps(answer).encode() + b"\n" for answer in answers)


def exposition(reading):
    text = metrics.render(supervisor(), queues=reading)
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


# -- the probe's answer -----------------------------------------------------------------

def test_counts_of_existing_queues_and_the_delay_queues_sum():
    counts = {"taskqueue": [3, 1], "worker_worker2": [0, 2], "taskqueue_dead": None,
              delays.LEVEL_QUEUES[0]: [4, 0], delays.LEVEL_QUEUES[5]: [1, 0]}
    reading = parse_answer(lines({"counts": counts}), QUEUES)
    assert reading == Reading(QUEUES, counts={"taskqueue": (3, 1), "worker_worker2": (0, 2)},
                              delayed=5)
    assert reading.broker_up


@pytest.mark.parametrize("data", [
    b"", b"{}\n", b'{"counts": ', b"[1, 2]\n", b"\xff\xfe\n", b'"counts"\n',
    lines({"broker_error": ""}),
])
def test_no_answer_or_a_broken_one_is_the_broker_down(data):
    reading = parse_answer(data, QUEUES, timeout=3)
    assert not reading.broker_up
    assert reading.broker_error == "no answer within 3s"


@pytest.mark.parametrize("bad", [-1, 1.5, True, "7", None, [1], [1, "2"], [1, 2, 3], {"a": 1}])
def test_a_figure_that_is_no_count_leaves_its_queue_out(bad):
    reading = parse_answer(lines({"counts": {"taskqueue": bad, "worker_worker2": [1, 1],
                                             "not_asked": [9, 9]}}), QUEUES)
    assert reading.counts == {"worker_worker2": (1, 1)}


def test_management_answers_after_the_broker_or_says_why_not():
    broker = {"counts": {"taskqueue": [0, 1]}}
    asked = parse_answer(lines(broker, {"unacked": {"taskqueue": 2, "worker_worker2": None,
                                                    "taskqueue_dead": "x"}}), QUEUES, True)
    assert asked.unacked == {"taskqueue": 2} and asked.management_error is None
    failed = parse_answer(lines(broker, {"management_error": "HTTP 401"}), QUEUES, True)
    assert failed.management_error == "HTTP 401" and failed.unacked is None
    late = parse_answer(lines(broker), QUEUES, True, timeout=3)   # killed before it answered
    assert late.broker_up and late.management_error == "no answer within 3s"


def test_the_management_api_answers_with_the_broker_down():
    # (a wrong [amqp] password: AMQP refuses the login, and so does the API)
    refused = {"broker_error": "ACCESS_REFUSED"}
    both = parse_answer(lines(refused, {"management_error": "HTTP 401"}), QUEUES, True)
    assert not both.broker_up and both.management_asked
    assert both.management_error == "HTTP 401" and both.unacked is None
    api_alone = parse_answer(lines(refused, {"unacked": {"taskqueue": 2}}), QUEUES, True)
    assert not api_alone.broker_up and api_alone.unacked == {"taskqueue": 2}
    assert not parse_answer(lines(refused), QUEUES).management_asked


def test_a_password_in_an_error_is_hidden():
    redact.remember("s3cret-pw")   # as the config load does (conftest forgets it after)
    reading = parse_answer(lines({"broker_error": "amqp://u:s3cret-pw@h: refused"}), QUEUES)
    assert "s3cret-pw" not in reading.broker_error


def test_wanted_queues_are_bounded_and_sorted():
    from taskqueue.supervision.specs import ChildSpec
    specs = [ChildSpec(f"w{n:03}", 1, None, queue=f"worker_w{n:03}") for n in range(100)]
    specs.append(ChildSpec("dispatcher", 1, None, queue="taskqueue", kind="dispatcher"))
    wanted = queuegauges.wanted_queues(specs)
    assert wanted[0] == "taskqueue" and wanted[-1] == "taskqueue_dead"
    assert wanted[1:-1] == tuple(queue for n in range(64)
                                 for queue in (f"worker_w{n:03}", f"worker_w{n:03}+high"))


# -- the cache --------------------------------------------------------------------------

def test_scrapes_share_a_probe_and_a_fresh_reading(monkeypatch):
    asked = []

    def ask(queues):
        asked.append(queues)
        gevent.sleep(0.05)
        return Reading(queues, counts={"taskqueue": (len(asked), 0)}, delayed=0)
    gauges = queuegauges.QueueGauges(AmqpSettings(), ask=ask)
    specs = supervisor().specs
    together = [gevent.spawn(gauges.read, specs) for _ in range(5)]
    gevent.joinall(together, timeout=5)
    assert len(asked) == 1 and all(g.value.counts["taskqueue"] == (1, 0) for g in together)
    assert gauges.read(specs).counts["taskqueue"] == (1, 0)   # fresh: not asked again
    now = queuegauges.time.monotonic()
    monkeypatch.setattr(queuegauges.time, "monotonic", lambda: now + queuegauges.FRESH_SECONDS)
    assert gauges.read(specs).counts["taskqueue"] == (2, 0)


def test_a_failing_ask_is_the_broker_down_and_the_next_scrape_asks_again():
    calls = []

    def ask(queues):
        calls.append(1)
        raise OSError("fork: EAGAIN")
    gauges = queuegauges.QueueGauges(AmqpSettings(), ask=ask)
    assert not gauges.read(supervisor().specs).broker_up
    gauges._read_at = float("-inf")
    gauges.read(supervisor().specs)
    assert len(calls) == 2


# -- the exposition ---------------------------------------------------------------------

def test_exposition_of_the_gauges():
    reading = Reading(QUEUES, counts={"taskqueue": (3, 0), "worker_worker2": (7, 2)}, delayed=4,
                      management_asked=True, unacked={"worker_worker2": 2})
    found = exposition(reading)
    assert found[("taskqueue_broker_up", frozenset())] == 1
    assert found[("taskqueue_queue_messages_ready", frozenset({("queue", "taskqueue")}))] == 3
    assert found[("taskqueue_queue_consumers", frozenset({("queue", "worker_worker2")}))] == 2
    assert found[("taskqueue_delayed_messages", frozenset())] == 4
    assert found[("taskqueue_management_up", frozenset())] == 1
    assert found[("taskqueue_queue_messages_unacked",
                  frozenset({("queue", "worker_worker2")}))] == 2


def test_without_management_url_or_broker_the_gauges_are_absent():
    plain = exposition(Reading(QUEUES, counts={"taskqueue": (0, 1)}, delayed=0))
    assert not any(name.startswith(("taskqueue_queue_messages_unacked", "taskqueue_management"))
                   for name, _ in plain)
    down = exposition(Reading(QUEUES, broker_error="refused"))
    assert down[("taskqueue_broker_up", frozenset())] == 0
    assert not any(name.startswith("taskqueue_queue_") or name == "taskqueue_delayed_messages"
                   for name, _ in down)
    # The management API is another source: its gauges stand or go absent on their own
    refused = exposition(Reading(QUEUES, broker_error="refused", management_asked=True,
                                 management_error="HTTP 401"))
    assert refused[("taskqueue_broker_up", frozenset())] == 0
    assert refused[("taskqueue_management_up", frozenset())] == 0
    assert not any(name.startswith("taskqueue_queue_") for name, _ in refused)
    api_alone = exposition(Reading(QUEUES, broker_error="refused", management_asked=True,
                                   unacked={"taskqueue": 2}))
    assert api_alone[("taskqueue_management_up", frozenset())] == 1
    assert api_alone[("taskqueue_queue_messages_unacked", frozenset({("queue", "taskqueue")}))] == 2
    assert not any(name == "taskqueue_queue_messages_ready" for name, _ in api_alone)


# -- the management API -----------------------------------------------------------------

@pytest.mark.parametrize("body, expected", [
    (b'{"name": "q", "messages_unacknowledged": 5}', 5),
    (b'{"name": "q"}', None),                                  # no figure yet
    (b'{"name": "q", "messages_unacknowledged": null}', None),
])
def test_parse_queue(body, expected):
    assert management.parse_queue(body, "q") == expected


@pytest.mark.parametrize("body", [
    b"", b"not json", b"[]", b"null", b'"q"', b"\xff\xfe",
    b'{"name": "other", "messages_unacknowledged": 1}',
    b'{"name": "q", "messages_unacknowledged": -1}',
    b'{"name": "q", "messages_unacknowledged": 1.5}',
    b'{"name": "q", "messages_unacknowledged": true}',
    b'{"name": "q", "messages_unacknowledged": "12"}',
    b'{"name": "q", "messages_unacknowledged": 1e400}',
    b"[" * 100000 + b"]" * 100000,                              # too deep for json
])
def test_parse_queue_refuses_what_is_no_queue_object(body):
    with pytest.raises(TaskqueueError, match="the management API"):
        management.parse_queue(body, "q")


class API(http.server.BaseHTTPRequestHandler):
    answers = {}   # path without query -> (status, body)
    seen = []

    def do_GET(self):
        API.seen.append((self.path, self.headers.get("Authorization")))
        status, body = API.answers.get(self.path.split("?")[0], (404, b'{"error":"Not Found"}'))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def api():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), API)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    API.answers, API.seen = {}, []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_unacked_counts_asks_each_queue_of_the_vhost_with_amqps_credentials(api):
    API.answers = {"/api/queues/a%2Fb/worker_x": (200, b'{"name":"worker_x",'
                                                       b'"messages_unacknowledged":3}')}
    settings = AmqpSettings(vhost="a/b", user="mon", password="pw:d")
    counts = management.unacked_counts(api, settings, ["worker_x", "taskqueue"], 2)
    assert counts == {"worker_x": 3, "taskqueue": None}
    assert {auth for _, auth in API.seen} == {"Basic bW9uOnB3OmQ="}   # mon:pw:d


@pytest.mark.parametrize("status, body, message", [
    # RabbitMQ's own answers (3.10): its reason is shown, with what to check
    (401, b'{"error":"not_authorized","reason":"Login failed"}',
     "HTTP 401 Unauthorized: Login failed (check [amqp] user and password, the user's tag "
     "(`management` or `monitoring`) and its permissions on [amqp] vhost)"),
    (401, b'{"error":"not_authorised","reason":"Not management user"}',
     "HTTP 401 Unauthorized: Not management user (check"),
    (400, b"", "HTTP 400 Bad Request (check [metrics] management_url: the API's base URL"),
    # an answer that is not RabbitMQ's: no reason, or one shown escaped and cut short
    (401, b"{}", "HTTP 401 Unauthorized (check [amqp] user and password"),
    (401, b'{"reason": ["not", "text"]}', "HTTP 401 Unauthorized (check"),
    (403, b'{"reason": "a\\u001b[2Jb' + b"x" * 300 + b'"}',
     "HTTP 403 Forbidden: a\\x1b[2Jb" + "x" * 194 + "... (check"),
    (403, b"[" * 100000, "HTTP 403 Forbidden (check"),
    (500, b"", "HTTP 500"),
    (200, b"x" * (management.MAX_BODY + 1), "an answer longer than"),
    (200, b"<html>", "not JSON"),
])
def test_unacked_counts_says_why_the_api_did_not_answer(api, status, body, message):
    API.answers = {"/api/queues/%2F/q": (status, body)}
    with pytest.raises(TaskqueueError, match=re.escape(message)):
        management.unacked_counts(api, AmqpSettings(password="s3cret"), ["q"], 2)


def test_unacked_counts_of_an_api_nobody_serves_hides_the_password():
    from nodes import free_port
    with pytest.raises(TaskqueueError) as caught:
        management.unacked_counts(f"http://127.0.0.1:{free_port()}",
                                  AmqpSettings(password="s3cret"), ["q"], 2)
    assert "s3cret" not in str(caught.value) and "refused" in str(caught.value).lower()
