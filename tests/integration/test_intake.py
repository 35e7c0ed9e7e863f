"""The worker's intake: the next task taken in advance, and given back behind a long one."""
import pytest

from support import recorder_config, wait_for


@pytest.mark.timeout(60)
def test_a_task_held_behind_a_long_one_is_given_back_to_an_idle_worker(
        broker, start_pool, records):
    # Given one worker process that takes the next task in advance (the default lookahead)
    first = start_pool(recorder_config(records))
    wait_for(lambda: broker.counts("worker_recorder")[1] == 1, 15, "the first consumer")
    first.wait_log(r"consuming worker_recorder \(prefetch 4, 3 tasks in advance")
    # When a long task arrives with a short one behind it, both delivered to that process,
    broker.submit("recorder", {"id": "long", "sleep": 4}, message_id="m-long")
    broker.submit("recorder", {"id": "short"}, message_id="m-short")
    long_start, = wait_for(lambda: records.all("start"), 10, "the long task started")
    # and a second worker process becomes free meanwhile
    second = start_pool(recorder_config(records), command="workerpool")
    # Then the short task does not wait for the long one: the first process gave it
    # back after the lookahead (0.1 s), and the free process ran it.
    short, = wait_for(lambda: [r for r in records.all() if r["id"] == "short"], 10, "short done")
    assert short["pid"] != long_start["pid"]
    assert short["redelivered"] is True   # delivered once already, though never started
    assert not [r for r in records.all() if r["id"] == "long"], "the long task was still running"
    long_done = wait_for(lambda: [r for r in records.all() if r["id"] == "long"], 15, "long done")
    assert long_done[0]["time"] > short["time"]
    # And the first process goes on taking tasks: 20 more are all done, each once.
    for n in range(20):
        broker.submit("recorder", {"id": f"t{n}"})
    wait_for(lambda: len(records.ids()) == 22, 20, "22 tasks done")
    assert sorted(records.ids("start")) == sorted(records.ids())
    assert broker.counts("worker_recorder")[0] == 0
    assert first.stop() == 0 and second.stop() == 0


@pytest.mark.timeout(60)
def test_an_explicit_prefetch_holds_that_many_and_gives_nothing_back(broker, start_pool, records):
    # Given a worker with an explicit prefetch of 2, and a second one free
    first = start_pool(recorder_config(records, extra="prefetch: 2\n"))
    first.wait_log(r"consuming worker_recorder \(prefetch 2\)$")
    broker.submit("recorder", {"id": "long", "sleep": 2}, message_id="m-long")
    broker.submit("recorder", {"id": "short"}, message_id="m-short")
    long_start, = wait_for(lambda: records.all("start"), 10, "the long task started")
    second = start_pool(recorder_config(records, extra="prefetch: 2\n"), command="workerpool")
    # Then the short task waits behind the long one, in the same process: as configured
    done = wait_for(lambda: len(records.all()) == 2 and records.all(), 15, "both done")
    by_id = {r["id"]: r for r in done}
    assert by_id["short"]["pid"] == long_start["pid"]
    assert by_id["short"]["time"] > by_id["long"]["time"]
    assert not by_id["short"]["redelivered"]
    assert first.stop() == 0 and second.stop() == 0


@pytest.mark.parametrize("extra", ["lookahead: 0\n", "max_tasks: 2\n"])
@pytest.mark.timeout(60)
def test_one_at_a_time_a_task_not_run_is_followed_by_the_next(broker, start_pool, records,
                                                              client, extra):
    # Given a worker that takes one task at a time (it asks the broker for each)
    start_pool(recorder_config(records, extra=extra))
    wait_for(lambda: broker.counts("worker_recorder")[1] == 1, 15, "the consumer")
    wait_for(lambda: broker.counts("taskqueue")[1] == 1, 15, "the dispatcher")
    # When a task it refuses (a forged header), one past its deadline, and one cancelled
    # (delayed, so that the cancel is in long before it) come before good ones
    from taskqueue.protocol import expiry
    broker.submit_one_hop("recorder", {"id": "forged"}, headers={"x-taskqueue-retries": "x"})
    broker.submit_one_hop("recorder", {"id": "late"},
                          headers={expiry.EXPIRES_HEADER: expiry.deadline(-1)})
    cancelled = client.submit("recorder", {"id": "cancelled", "sleep": 0.01}, delay=1)
    client.cancel(cancelled)
    ids = [f"after-{n}" for n in range(3)]
    for task_id in ids:
        client.submit("recorder", {"id": task_id}, delay=2)
    # Then each is settled and the worker goes on to the next
    wait_for(lambda: set(ids) <= set(records.ids()), 30, "the tasks after them")
    assert not {"forged", "late", "cancelled"} & set(records.ids("start"))
