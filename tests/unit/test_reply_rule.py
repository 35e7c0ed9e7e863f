"""replies: a reply taskqueue sends for a plugin goes to a reply queue, never to a queue a
submitter picked (taskqueue's own least of all); the reply_queues option; the channel."""
import logging

import gevent
import pika
import pytest
from hypothesis import given, strategies as st

from taskqueue.errors import ConfigError
from taskqueue.host import config
from taskqueue.protocol import replies
from taskqueue.protocol.replies import allowed, parse_reply_queues
from taskqueue.worker import HubCalls, TaskChannel

from fakes import RecordingSession

#: What a submitter may write into reply_to to make a worker publish with its account.
TASKQUEUES_OWN = ["taskqueue", "taskqueue_dead", "worker_recorder", "worker_", "taskqueue.delay.3",
                  "taskqueue.direct"]


@pytest.mark.parametrize("reply_to", ["amq.rabbitmq.reply-to", "amq.rabbitmq.reply-to.g1h2AA5yZXBs",
                                      "amq.gen-JzTY20BRgKO-HjmUJj0wLg"])
def test_rabbitmqs_reply_queues_are_allowed(reply_to):
    assert allowed(reply_to)


@pytest.mark.parametrize("reply_to",
                         TASKQUEUES_OWN + ["results", "", None, "amq.gen", "x.amq.gen-1"])
def test_any_other_queue_is_not(reply_to):
    assert not allowed(reply_to)


def test_the_option_adds_names_and_prefixes_but_never_taskqueues_own_queues():
    extra = ("results", "replies_*")
    assert allowed("results", extra) and allowed("replies_1", extra) and allowed("replies_", extra)
    assert not allowed("results2", extra) and not allowed("replie", extra)
    for name in TASKQUEUES_OWN:
        assert not allowed(name, ("taskqueue", "worker_*", "*"))   # even if the config said so


@given(st.text(), st.lists(st.sampled_from(["results", "replies_*", "amq.*", "x"]), max_size=3))
def test_an_allowed_reply_to_is_never_one_of_taskqueues_own_queues(name, extra):
    if allowed(name, tuple(extra)):
        assert not name.startswith(("taskqueue", "worker_"))


@pytest.mark.parametrize("value, problem", [
    ("results, replies_*", None),
    ("taskqueue", "could name one of taskqueue's own queues"),
    ("worker_echo", "could name one of taskqueue's own queues"),
    ("work*", "could name one of taskqueue's own queues"),
    ("*", "could name one of taskqueue's own queues"),
    ("taskqueue_results", "could name one of taskqueue's own queues"),
    ("a*b", "'*' may only end an entry"),
    ("results,, x", "found an empty entry"),
    ("has space", "is not a queue name"),
    ("esc\x1b", "is not a queue name"),
    ("x" * 256, "is not a queue name"),
])
def test_the_option_is_checked(value, problem):
    if problem is None:
        assert parse_reply_queues(value) == ("results", "replies_*")
    else:
        with pytest.raises(ValueError, match=problem):
            parse_reply_queues(value)


def test_the_config_gives_each_group_its_reply_queues_and_refuses_a_bad_one(tmp_path):
    path = tmp_path / "config.ini"
    path.write_text("[DEFAULT]\nworkers: 1\n\n[echo]\nreply_queues: results, replies_*\n")
    groups = {g.worker_type: g for g in config.load(str(path), {"echo", "other"}).groups}
    assert groups["echo"].reply_queues == ("results", "replies_*")
    assert groups["other"].reply_queues == ()
    path.write_text("[DEFAULT]\nworkers: 1\n\n[echo]\nreply_queues: worker_*\n")
    with pytest.raises(ConfigError) as info:
        config.load(str(path), {"echo"})
    assert f"{path}: [echo] reply_queues = 'worker_*': 'worker_*' could name one of " \
           "taskqueue's own queues" in str(info.value)


# -- the channel a plugin uses ----------------------------------------------------------

def in_thread(fn, timeout=5):
    """Run fn() in a real thread, as handle_task runs, while the hub goes on."""
    return gevent.get_hub().threadpool.spawn(fn).get(timeout=timeout)


@pytest.mark.parametrize("reply_to", TASKQUEUES_OWN + ["results"])
def test_a_reply_to_a_queue_that_is_no_reply_queue_is_not_sent_and_the_task_is_left_to_settle(
        reply_to, caplog):
    session = RecordingSession(require_mandatory=False)
    session.delivered.append(7)
    channel = TaskChannel(session, HubCalls(), 7, pika.BasicProperties(
        reply_to=reply_to, message_id="m\x1b[2J"))
    with caplog.at_level(logging.WARNING):
        in_thread(lambda: channel.reply(b"answer"))
    assert session.calls == [] and channel.settlement is None
    assert (f"reply to task m\x1b[2J (delivery 7) not sent: its reply_to {reply_to!r} is not a "
            "reply queue (reply queues; see reply_queues") in caplog.text
    in_thread(lambda: channel.basic_ack(7))     # the plugin acks as it always does
    assert channel.settlement == "ack"


def test_a_reply_to_a_queue_the_group_allows_is_sent():
    session = RecordingSession(require_mandatory=False)
    session.delivered.append(7)
    channel = TaskChannel(session, HubCalls(), 7, pika.BasicProperties(
        reply_to="results", correlation_id="c-1"), reply_queues=("results",))
    in_thread(lambda: channel.reply(b"answer"))
    assert session.calls == [("reply", "results", b"answer")]
    assert replies.describe(("results",)) == "reply queues, results"
