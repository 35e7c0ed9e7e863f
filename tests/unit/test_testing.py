"""taskqueue.testing.run_task: a plugin's task run in the test's process, settled by the
worker's own decisions, without a broker. tests/integration/test_testing_both_ways.py
runs the same plugin on a real pool and compares."""
import json
import threading

import pytest

from support import wait_for
from taskqueue.errors import ConfigError, PluginError
from taskqueue.protocol import retries, topology
from taskqueue.testing import OUTCOMES, run_task
from taskqueue.worker import BaseWorker

CALLER = topology.DIRECT_REPLY_TO     # what Client.call sets as reply_to


class Scripted(BaseWorker):
    """Does what its workitem, a list of steps, says: ["ack"], ["ack", "ack"], ["reject"],
    ["nack_requeue"], ["retry", DELAY], ["raise"], ["reply", TEXT], ["publish", QUEUE, TEXT],
    ["publish_from_thread", QUEUE, TEXT]; no step settles nothing."""

    def handle_task(self, channel, method, header, body):
        for step, *args in json.loads(body):
            if step == "ack":
                channel.basic_ack(method.delivery_tag)
            elif step == "reject":
                channel.basic_reject(method.delivery_tag, requeue=False)
            elif step == "nack_requeue":
                channel.basic_nack(method.delivery_tag, requeue=True)
            elif step == "retry":
                channel.retry(*args)
            elif step == "raise":
                raise ValueError("boom")
            elif step == "reply":
                channel.reply(args[0])
            elif step == "publish":
                channel.basic_publish("", args[0], args[1])
            elif step == "publish_from_thread":
                thread = threading.Thread(target=channel.basic_publish, args=("", *args))
                thread.start()
                thread.join(10)


def test_run_task_acks_a_task_the_plugin_acked():
    result = run_task(Scripted, [["ack"]])
    assert (result.outcome, result.reason, result.exception, result.events) == \
        ("ack", None, None, ())


def test_run_task_acks_with_a_warning_when_the_plugin_returned_without_settling(caplog):
    assert run_task(Scripted, []).outcome == "ack"
    assert "handle_task returned without settling it; acking" in caplog.text


def test_run_task_ignores_a_second_ack_with_a_warning(caplog):
    assert run_task(Scripted, [["ack"], ["ack"]]).outcome == "ack"
    assert "basic_ack on delivery 1 ignored: already settled by basic_ack" in caplog.text


def test_a_rejected_task_is_reject_dead_lettered_by_the_broker_with_a_failure_reply():
    result = run_task(Scripted, [["reject"]], reply_to=CALLER)
    assert result.outcome == "reject"
    assert result.reason == "rejected by the plugin (basic_reject without requeue)"
    assert result.copies == ()      # the broker dead-letters it, not the worker
    assert [e["event"] for e in result.events] == ["failed"]
    (reply,) = result.replies
    assert reply.failure == result.reason


def test_a_task_given_back_with_requeue_is_requeue():
    result = run_task(Scripted, [["nack_requeue"]])
    assert (result.outcome, result.reason) == ("requeue", "given back by the plugin")


def test_retry_with_a_delay_is_retry_with_that_delay_and_a_copy_counting_it():
    result = run_task(Scripted, [["retry", 5]])
    assert (result.outcome, result.delay) == ("retry", 5.0)
    (copy,) = result.copies
    assert copy.properties.headers[retries.RETRIES_HEADER] == 1
    assert copy.body == b'[["retry",5]]'
    assert result.events[0]["event"] == "retried"


def test_a_task_that_raises_with_max_retries_left_is_retry_after_the_groups_backoff():
    result = run_task(Scripted, [["raise"]], config={"max_retries": 3, "retry_delay": 2})
    assert result.outcome == "retry"
    assert 2.0 <= result.delay <= 2.0 * (1 + retries.JITTER)
    assert isinstance(result.exception, ValueError)
    assert result.reason == "ValueError: boom"


def test_a_task_that_raises_with_its_retries_spent_is_dead_with_the_workers_reason():
    result = run_task(Scripted, [["raise"]], config={"max_retries": 2},
                      headers={retries.RETRIES_HEADER: 2}, reply_to=CALLER)
    assert result.outcome == "dead"
    assert result.reason == "raised ValueError: boom after 2 retries"
    (dead_letter,) = result.copies
    assert dead_letter.routing_key == topology.DEAD_QUEUE
    assert dead_letter.properties.headers["x-taskqueue-reason"] == result.reason
    assert [r.failure for r in result.replies] == [result.reason]


def test_retry_past_the_cap_without_max_retries_is_dead():
    result = run_task(Scripted, [["retry"]],
                      headers={retries.RETRIES_HEADER: retries.EXPLICIT_RETRY_CAP})
    assert result.outcome == "dead"
    assert result.reason == (f"retry() asked after {retries.EXPLICIT_RETRY_CAP} retries: the cap "
                             f"of {retries.EXPLICIT_RETRY_CAP} retries without max_retries reached")


def test_a_task_that_raises_without_max_retries_is_raised_with_its_exception():
    result = run_task(Scripted, [["raise"]], reply_to=CALLER)
    assert result.outcome == "raised"
    assert isinstance(result.exception, ValueError) and str(result.exception) == "boom"
    assert result.reason == "raised ValueError: boom"
    assert [r.failure for r in result.replies] == ["raised ValueError: boom"]


def test_a_task_that_raises_once_acked_stays_ack_and_keeps_its_exception():
    result = run_task(Scripted, [["ack"], ["raise"]])
    assert result.outcome == "ack"
    assert isinstance(result.exception, ValueError)


def test_a_reply_reaches_reply_to_with_the_tasks_correlation_id():
    result = run_task(Scripted, [["reply", "hello"], ["ack"]], reply_to=CALLER)
    (reply,) = result.replies
    assert (reply.body, reply.content_type, reply.failure) == \
        (b"hello", "text/plain; charset=utf-8", None)
    assert reply.correlation_id


def test_a_reply_goes_nowhere_when_the_task_has_no_reply_to_or_not_a_reply_queue(caplog):
    assert run_task(Scripted, [["reply", "x"], ["ack"]]).replies == ()
    assert run_task(Scripted, [["reply", "x"], ["ack"]], reply_to="worker_other").replies == ()
    assert "the task has no reply_to" in caplog.text
    assert "is not a reply queue" in caplog.text


def test_a_group_option_reply_queues_lets_a_reply_reach_another_queue():
    result = run_task(Scripted, [["reply", "x"], ["ack"]], reply_to="results",
                      config={"reply_queues": "results"})
    assert [r.body for r in result.replies] == [b"x"]


def test_what_the_plugin_publishes_is_kept_in_order_from_its_own_threads_too():
    result = run_task(Scripted, [["publish", "audit", "one"],
                                 ["publish_from_thread", "audit", "two"], ["ack"]])
    assert [(m.routing_key, m.body) for m in result.published] == \
        [("audit", b"one"), ("audit", b"two")]


def test_every_outcome_word_is_documented():
    assert set(OUTCOMES) == {"ack", "retry", "requeue", "reject", "raised", "dead"}


class Configured(BaseWorker):
    """Records its life and what it saw, in the class (one instance per run_task)."""
    seen = []

    def setup(self):
        self.seen.append(("setup", self.settings.get("greeting"), self.group.worker_type))

    def handle_task(self, channel, method, header, body):
        self.seen.append(("task", body, header.content_type, method.routing_key,
                          (header.headers or {}).get("tenant")))
        channel.basic_ack(method.delivery_tag)

    def teardown(self):
        self.seen.append(("teardown",))


def test_run_task_builds_the_plugin_with_its_config_and_calls_setup_and_teardown_around_it():
    Configured.seen = []
    run_task(Configured, b"\x00raw", content_type="application/octet-stream",
             headers={"tenant": "a"}, config={"greeting": "hi"}, worker_type="greeter")
    assert Configured.seen == [("setup", "hi", "greeter"),
                               ("task", b"\x00raw", "application/octet-stream", "greeter", "a"),
                               ("teardown",)]


def test_run_task_encodes_the_workitem_as_client_submit_does():
    Configured.seen = []
    run_task(Configured, {"b": [1, 2.5, None]})
    assert Configured.seen[1][1:3] == (b'{"b":[1,2.5,null]}', "application/json")


def test_a_workitem_client_submit_refuses_is_a_value_error():
    with pytest.raises(ValueError, match="workitem for test: not JSON"):
        run_task(Configured, {"a": {1, 2}})


def test_a_bad_config_option_is_a_config_error_naming_the_option():
    with pytest.raises(ConfigError, match=r"\[test\] max_retries = 'many': expected"):
        run_task(Configured, {}, config={"max_retries": "many"})


def test_a_plugin_whose_setup_raises_is_a_plugin_error():
    class Broken(BaseWorker):
        def setup(self):
            raise OSError("no database")
    with pytest.raises(PluginError, match=r"setup\(\) failed: OSError: no database"):
        run_task(Broken, {})


def test_a_factory_and_an_entry_point_name_are_plugins_too():
    made = []

    def factory(group):
        made.append(group.worker_type)
        return Scripted(group)
    assert run_task(factory, [["ack"]], worker_type="made").outcome == "ack"
    assert made == ["made"]
    # examples/echo, installed beside taskqueue in the test environments (run-tests)
    result = run_task("echo", {"x": 1}, reply_to=CALLER)
    assert (result.outcome, [r.body for r in result.replies]) == ("ack", [b'{"x":1}'])


def test_many_tasks_in_a_row_leave_no_thread_behind():
    before = threading.active_count()
    for _ in range(50):
        assert run_task(Scripted, [["ack"]]).outcome == "ack"
    # Each task thread ends once closed, soon after its task.
    wait_for(lambda: threading.active_count() <= before, 10,
             lambda: f"the task threads to end: {threading.enumerate()}")
