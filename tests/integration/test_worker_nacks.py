"""A worker whose dead letter or retry copy the broker nacks (a full queue).

The worker publishes those copies with a confirm and acks the task only then.
A nack is the broker saying "not taken, send it again" (nacks.py): the worker
tries it as nacks.py says, then gives the task back to its queue with a warning,
and stays up; once the queue has room, the copy goes through. It must not take the
nack for a lost broker (exit 3, a restart, the task redelivered to a new process).
The broker nacks for real here: a policy of max-length 0 with reject-publish on
taskqueue_dead, or on the delay queues, lifted when the test makes room.
"""
import re

import pytest

from support import config_text, nacking_vhost, recorder_config, stop_nacking, wait_for

#: What the worker says when it gives a task back (the refusal is nacks.refused's).
GIVEN_BACK = (r"task {task} \(delivery \d+\): the broker refused the {what} "
              r"\(nack; 3 tries in 2 s\): is the queue full \(max-length with reject-publish\)\?; "
              r"given back to worker_recorder: it comes again")


def start_classic_pool(start_pool, vhost, records, extra, amqp_port):
    """A pool on the nacking vhost (classic queues, which hold a max-length exactly)."""
    pool = start_pool(config_text(vhost, recorder_config(records, extra=extra), port=amqp_port,
                                  amqp_extra="queue_type: classic\n"), raw=True)
    pool.wait_log(r"recorder#0 .*STARTING -> RUNNING")
    return pool


def assert_never_restarted(pool, children):
    assert pool.children() == children
    log = pool.log()
    assert not re.search(r"#0 pid=\d+ RUNNING -> ", log), log[-3000:]
    assert "lost the broker" not in log and "exit 3" not in log, log[-3000:]


@pytest.mark.timeout(120)
def test_dead_letters_the_broker_nacks_give_their_tasks_back_until_taskqueue_dead_has_room(
        start_pool, records, amqp_port, broker_port):
    # Given taskqueue_dead full: the broker nacks every publish into it
    with nacking_vhost(0, broker_port, queues="^taskqueue_dead$",
                       overflow="reject-publish") as (vhost, broker):
        pool = start_classic_pool(start_pool, vhost, records, "max_retries: 1\n", amqp_port)
        children = pool.children()
        # When a task whose retries are spent raises: the worker dead-letters it
        broker.submit("recorder", {"id": "broken", "fail_times": 99}, message_id="m-broken",
                      headers={"x-taskqueue-retries": 1})
        # and a task the worker refuses as it comes in (one hop, a forged dead-letter header)
        broker.submit_one_hop("recorder", {"id": "forged"}, message_id="m-forged",
                              headers={"x-taskqueue-reason": "forged"})
        # Then each dead letter is tried 3 times, the task given back, and it comes again
        for task in ("m-broken", "m-forged"):
            pool.wait_log(GIVEN_BACK.format(task=task, what="message for taskqueue_dead"),
                          timeout=40, count=2)
        # and the worker never took that for a lost broker
        assert_never_restarted(pool, children)
        # When taskqueue_dead has room again
        stop_nacking(vhost)
        # Then the dead letters go in, once each, with their reasons, and the tasks are settled
        dead = {}

        def both_dead():
            for props, _ in broker.drain("taskqueue_dead"):
                assert props.message_id not in dead, f"{props.message_id} dead-lettered twice"
                dead[props.message_id] = props.headers["x-taskqueue-reason"]
            return len(dead) == 2
        wait_for(both_dead, 30, lambda: f"both tasks dead-lettered (have {sorted(dead)})")
        assert dead["m-broken"] == (
            "raised RuntimeError: task broken fails attempt 1 after 1 retries")
        assert dead["m-forged"].startswith("header 'x-taskqueue-reason' set by its publisher")
        # (the refused one never reached the plugin; the raising one ran at each coming)
        assert {r["id"] for r in records.all("start")} == {"broken"} and records.ids() == []
        wait_for(lambda: broker.counts("worker_recorder")[0] == 0, 10, "worker_recorder empty")
        assert_never_restarted(pool, children)
        assert pool.stop() == 0
        assert broker.counts("worker_recorder")[0] == 0   # nothing given back at the stop
        assert broker.counts("taskqueue_dead")[0] == 0


@pytest.mark.timeout(90)
def test_a_retry_the_delay_queues_nack_gives_the_task_back_until_they_have_room(
        start_pool, records, amqp_port, broker_port):
    # Given delay queues that are full: the broker nacks every retry's copy
    with nacking_vhost(0, broker_port, queues=r"^taskqueue\.delay\.\d+$",
                       overflow="reject-publish") as (vhost, broker):
        pool = start_classic_pool(start_pool, vhost, records,
                                  "max_retries: 3\nretry_delay: 1\n", amqp_port)
        children = pool.children()
        # When a task raises on its first attempt, with retries left
        broker.submit("recorder", {"id": "flaky", "fail_times": 1}, message_id="m-flaky")
        # Then its retry is tried 3 times, the task given back, and it comes again
        what = r"message for worker_recorder in \d+s, into taskqueue\.delay\.\d+"
        pool.wait_log(GIVEN_BACK.format(task="m-flaky", what=what), timeout=30, count=2)
        assert_never_restarted(pool, children)
        assert records.ids() == []
        # When the delay queues have room again
        stop_nacking(vhost)
        # Then the retry goes through: the task comes back counted and completes, once
        wait_for(lambda: records.ids() == ["flaky"], 30, "the task done after its retry")
        pool.wait_log(r"task m-flaky: retry 1 in \d")
        assert [r["retries"] for r in records.all("start")].count(1) == 1
        assert_never_restarted(pool, children)
        assert pool.stop() == 0
        assert broker.counts("worker_recorder")[0] == 0
        assert broker.counts("taskqueue_dead")[0] == 0
