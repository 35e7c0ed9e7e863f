"""Priorities on the real broker (priorities.py): tasks of priority 5-9 go to the type's
high queue, which its workers take from first, on every broker and queue type; both
paths (one hop, and through the dispatcher: a task submitted to `taskqueue`, a delayed
one); a long low task never sits on a high one another process could run."""
import pytest

from taskqueue.host.config import AmqpSettings

from support import recorder_config, wait_for

LOWS, HIGHS = 200, 10
#: Low tasks a worker process may start before its last high one: what it fetched first.
LOW_SLACK = 10
HIGH_QUEUE = "worker_recorder+high"


def submit_highs(path, client, broker):
    for n in range(HIGHS):
        task = {"id": f"high{n}"}
        if path == "one hop":
            client.submit("recorder", task, priority=9)
        elif path == "taskqueue":   # the envelope, as any AMQP client sends it
            broker.submit("recorder", task, priority=9, message_id=f"m-high{n}")
        else:
            client.submit("recorder", task, delay=1, priority=9)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
@pytest.mark.parametrize("path", ["one hop", "taskqueue", "delayed"])
def test_ten_high_tasks_submitted_after_two_hundred_low_ones_start_before_all_but_a_few_low_ones_in_each_process(
        broker, start_pool, records, client, queue_type, path):
    amqp = f"queue_type: {queue_type}\n"
    broker.settings = AmqpSettings(queue_type=queue_type)
    config = recorder_config(records, processes=2)
    # Given the type's queues, declared by its workers, which are then stopped,
    pool = start_pool(config, command="workerpool", amqp_extra=amqp)
    pool.wait_log(r"consuming worker_recorder", count=2)
    assert pool.stop() == 0
    # and a dispatcher for what comes through taskqueue
    dispatcher = start_pool("[DEFAULT]\nworkers: 0\n", command="dispatcher", amqp_extra=amqp)
    dispatcher.wait_log(r"routing taskqueue")
    # When 200 tasks of priority 0 are submitted, then 10 of priority 9
    client.submit_many("recorder", [{"id": f"low{n}"} for n in range(LOWS)], priority=0)
    submit_highs(path, client, broker)
    wait_for(lambda: broker.counts(HIGH_QUEUE)[0] == HIGHS, 30,
             lambda: f"{HIGHS} in {HIGH_QUEUE}: {broker.counts(HIGH_QUEUE)}")
    assert broker.counts("worker_recorder")[0] == LOWS
    # and the workers start again
    pool = start_pool(config, command="workerpool", amqp_extra=amqp)
    # Then each worker process starts the high tasks it takes before all but a few low
    # ones (LOW_SLACK; without priorities some 100 lows would come first). Counted per
    # process, not over both: a process that starts consuming 0.1 s after the other
    # begins with a high task of its own, which a count over both would put behind the
    # first process's lows (seen on a loaded machine).
    starts = wait_for(lambda: len(records.all("start")) == LOWS + HIGHS and records.all("start"),
                      60, lambda: f"{LOWS + HIGHS} started, not {len(records.all('start'))}")
    ordered = sorted(starts, key=lambda record: record["time"])
    order = [record["id"] for record in ordered]
    shown = " ".join(f"{r['id']}/{r['pid']}/{r['time'] - ordered[0]['time']:.3f}"
                     for r in ordered[:40])
    for pid in {r["pid"] for r in ordered}:
        own = [r["id"] for r in ordered if r["pid"] == pid]
        last_high = max((i for i, task in enumerate(own) if task.startswith("high")), default=-1)
        lows_before = sum(1 for task in own[:last_high] if task.startswith("low"))
        assert lows_before <= LOW_SLACK, f"process {pid}: {lows_before} lows before its last high: {shown}"
    # each once, with its priority
    highs = [r for r in starts if r["id"].startswith("high")]
    assert len(set(order)) == LOWS + HIGHS and all(r["routing_key"] for r in highs)
    assert pool.stop() == 0 and dispatcher.stop() == 0


@pytest.mark.timeout(90)
@pytest.mark.parametrize("lookahead", ["0.1", "0"])
def test_a_worker_busy_with_a_long_low_task_does_not_sit_on_a_high_one(
        broker, start_pool, records, client, lookahead):
    # Given one worker process (taking tasks in advance, or one at a time) running a
    # long task of priority 0
    first = start_pool(recorder_config(records, extra=f"lookahead: {lookahead}\n"),
                       command="workerpool")
    first.wait_log(r"consuming worker_recorder")
    client.submit("recorder", {"id": "long", "sleep": 6}, priority=0)
    long_start, = wait_for(lambda: records.all("start"), 15, "the long task started")
    # When a task of priority 9 comes, and a second process is free
    client.submit("recorder", {"id": "high"}, priority=9)
    second = start_pool(recorder_config(records), command="workerpool")
    # Then the free process runs it while the long one still runs
    high, = wait_for(lambda: [r for r in records.all() if r["id"] == "high"], 15, "high done")
    assert high["pid"] != long_start["pid"]
    assert not [r for r in records.all() if r["id"] == "long"], "the long task was done already"
    wait_for(lambda: [r for r in records.all() if r["id"] == "long"], 15, "long done")
    assert broker.counts("worker_recorder")[0] == broker.counts(HIGH_QUEUE)[0] == 0
    assert first.stop() == 0 and second.stop() == 0


@pytest.mark.timeout(60)
def test_one_at_a_time_a_worker_takes_high_tasks_first_and_gives_none_back(
        broker, start_pool, records, client):
    # Given a worker that runs one task per process (max_tasks 1: no lookahead), stopped
    config = recorder_config(records, extra="max_tasks: 1\n")
    pool = start_pool(config, command="workerpool")
    pool.wait_log(r"consuming worker_recorder")
    assert pool.stop() == 0
    # When 5 low tasks and then 5 high ones wait, and it starts
    for n in range(5):
        client.submit("recorder", {"id": f"low{n}"}, priority=1)
    for n in range(5):
        # Each long enough for a task of the other queue to be delivered meanwhile
        client.submit("recorder", {"id": f"high{n}", "sleep": 0.3}, priority=7)
    pool = start_pool(config, command="workerpool")
    # Then the high ones run first, and no task was delivered twice (none given back at
    # each replacement: its delivery count would grow toward the broker's limit)
    starts = wait_for(lambda: len(records.all("start")) == 10 and records.all("start"), 40,
                      lambda: f"10 started, not {len(records.all('start'))}")
    order = [r["id"] for r in sorted(starts, key=lambda r: r["time"])]
    assert order[:5] == [f"high{n}" for n in range(5)] and sorted(order[5:]) == [
        f"low{n}" for n in range(5)]
    assert not [r for r in starts if r["redelivered"]]
    assert pool.stop() == 0


@pytest.mark.timeout(60)
def test_without_a_high_queue_a_task_of_high_priority_goes_to_worker_type_with_its_priority(
        broker, start_pool, client):
    # Given a type no worker of this version ever ran (an older pool's, say): no high queue
    dispatcher = start_pool("[DEFAULT]\nworkers: 0\n", command="dispatcher")
    dispatcher.wait_log(r"routing taskqueue")
    # When tasks of priority 9 come one hop and through taskqueue
    client.submit("recorder", {"id": "onehop"}, priority=9)
    broker.submit("recorder", {"id": "envelope"}, priority=9)
    # Then the dispatcher puts them into worker_recorder, which an older pool consumes,
    # and creates no high queue there
    wait_for(lambda: broker.counts("worker_recorder")[0] == 2, 15, "both in worker_recorder")
    dispatcher.wait_log(r"worker_recorder\+high does not exist")
    assert [props.priority for props, _ in broker.drain("worker_recorder")] == [9, 9]
    assert broker._unless_missing(lambda queue: broker.channel.queue_declare(
        queue, passive=True) and "found", HIGH_QUEUE, "missing") == "missing"
    assert dispatcher.stop() == 0
