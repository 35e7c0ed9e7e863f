"""The echo plugin's own tests: taskqueue.testing runs each task as a worker of the
pool would (docs/03-writing-a-plugin.md, "Testing a plugin"), with no broker."""
from taskqueue.testing import run_task
from taskqueue_echo import EchoWorker

#: The reply_to Client.call and `taskqueue submit --wait` give a task.
CALLER = "amq.rabbitmq.reply-to"


def test_echo_acks_a_task_and_sends_its_workitem_back_to_whoever_waits():
    result = run_task(EchoWorker, {"text": "hello"}, reply_to=CALLER)
    assert result.outcome == "ack"
    assert [(reply.body, reply.content_type) for reply in result.replies] == \
        [(b'{"text":"hello"}', "application/json")]


def test_echo_only_acks_a_task_nobody_waits_for():
    result = run_task(EchoWorker, {"text": "hello"})
    assert (result.outcome, result.replies) == ("ack", ())


def test_echo_sends_bytes_back_as_they_came_with_their_content_type():
    result = run_task(EchoWorker, b"\x00\xff", content_type="application/octet-stream",
                      reply_to=CALLER)
    assert [(reply.body, reply.content_type) for reply in result.replies] == \
        [(b"\x00\xff", "application/octet-stream")]


def test_echo_logs_the_workitem_with_the_tasks_id(caplog):
    caplog.set_level("INFO", logger="taskqueue_echo")
    run_task(EchoWorker, {"text": "hello"})
    assert '{"text":"hello"}' in caplog.text


def test_the_installed_echo_entry_point_is_this_worker():
    result = run_task("echo", [1, 2], reply_to=CALLER)
    assert [reply.body for reply in result.replies] == [b"[1,2]"]
