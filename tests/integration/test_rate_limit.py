"""Rate limits on the real broker (taskqueue/protocol/ratelimits.py, broker/ratetokens.py,
runtime/rategate.py): two pools share one limit; a restarted pool keeps it; junk and
forged tokens in the token queue neither stop it nor raise the rate past what
ratelimits.is_extra allows."""
import re
import subprocess
import time

import pika
import pytest

from taskqueue.host.config import AmqpSettings
from taskqueue.protocol import ratelimits
from taskqueue.protocol.ratelimits import Bucket, RateLimit

from support import TASKQUEUE, Pool, config_text, wait_for

LIMIT = RateLimit(5, "s")
BUCKET = Bucket("recorder", LIMIT)


@pytest.fixture
def fresh_bucket(broker):
    """No tokens of an earlier test: the bucket's queues deleted before and after."""
    def delete():
        for queue in (BUCKET.token_queue, BUCKET.wait_queue):
            broker.channel.queue_delete(queue)
    delete()
    yield BUCKET
    delete()


def pool_config(vhost, records, status_dir, processes=4, limit=LIMIT, queue_type="quorum"):
    body = (f"[DEFAULT]\nworkers: 0\n\n[recorder]\nworkers: {processes}\n"
            f"record_dir: {records.path}\nrate_limit: {limit}\n")
    return config_text(vhost, body, status_dir=status_dir,
                       amqp_extra=f"queue_type: {queue_type}\n")


def start_workers(workdir, vhost, records, name, **kwargs):
    status_dir = f"{workdir}/run-{name}"
    return Pool(workdir, pool_config(vhost, records, status_dir, **kwargs), "workerpool")


def consumers(broker, count):
    wait_for(lambda: broker.counts("worker_recorder")[1] == count, 30,
             f"{count} consumers on worker_recorder")


def full_bucket(broker, bucket=BUCKET):
    wait_for(lambda: broker.counts(bucket.token_queue)[0] == bucket.limit.count, 30,
             f"{bucket.limit.count} tokens in {bucket.token_queue}")


def submit(broker, count, prefix):
    for n in range(count):
        broker.submit_one_hop("recorder", {"id": f"{prefix}{n}", "sleep": 0.05})


def start_times(records, prefix):
    return sorted(r["time"] for r in records.all("start") if r["id"].startswith(prefix))


def busiest_second(times):
    """The most starts in any window of one second (starting at a start: the worst)."""
    return max(sum(1 for t in times if start <= t < start + 1.0) for start in times)


def done(records, prefix, count):
    return lambda: len([r for r in records.all("done") if r["id"].startswith(prefix)]) >= count


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
@pytest.mark.timeout(120)
def test_two_pools_share_one_limit_of_5_per_second_50_tasks_take_9_to_12_s(
        broker, workdir, vhost, records, fresh_bucket, queue_type):
    # Given two pools of 4 workers each (two supervisors, as two hosts), rate_limit: 5/s
    broker.settings = AmqpSettings(queue_type=queue_type)
    pools = [start_workers(workdir, vhost, records, name, queue_type=queue_type)
             for name in ("a", "b")]
    try:
        consumers(broker, 8)
        full_bucket(broker)
        # When 50 tasks are submitted at once
        begin = time.time()
        submit(broker, 50, "t")
        # (taskqueue status shows the limit and the rate meanwhile)
        wait_for(lambda: len(start_times(records, "t")) >= 10, 10, "10 tasks started")
        shown = subprocess.run([TASKQUEUE, "status", "--config", pools[0].config_path],
                               capture_output=True, text=True, timeout=30).stdout
        assert re.search(r"^  recorder +5/s +all hosts +[0-5]/s +[0-5]$", shown, re.M), shown
        wait_for(done(records, "t", 50), 40, "50 tasks done")
        took = max(r["time"] for r in records.all("done")) - begin
        times = start_times(records, "t")
        # Then they take 9 to 12 s (10 periods of 5 starts, the first at once; a period
        # and its margin apart: ratelimits.wait_ms), no second
        # holds more than 7 starts, and both pools ran some
        print(f"\nrate 5/s, 2 pools x 4 workers ({queue_type}): 50 tasks in {took:.2f} s, at most "
              f"{busiest_second(times)} starts in a second")
        assert 9.0 <= took <= 12.0, took
        assert busiest_second(times) <= 7, [round(t - times[0], 3) for t in times]
        assert len({r["pid"] for r in records.all("start")}) > 4
        # and no token was made or lost: 5 in all once the last period has passed
        wait_for(lambda: broker.counts(BUCKET.token_queue)[0] == 5, 5, "the 5 tokens back")
        assert broker.counts(BUCKET.wait_queue)[0] == 0
        assert [pool.stop() for pool in pools] == [0, 0]
    finally:
        for pool in pools:
            pool.kill()


@pytest.mark.timeout(120)
def test_a_restarted_pool_keeps_the_limit_and_mints_no_tokens(broker, workdir, vhost, records,
                                                              fresh_bucket):
    # Given a pool under rate_limit 5/s, running a backlog of 30 tasks
    pool = start_workers(workdir, vhost, records, "a")
    consumers(broker, 4)
    full_bucket(broker)
    submit(broker, 30, "r")
    wait_for(lambda: len(start_times(records, "r")) >= 8, 20, "8 tasks started")
    # When it stops mid-period (tokens in the wait queue, tasks in hand) and starts again
    assert pool.stop() == 0
    pool.kill()
    pool = start_workers(workdir, vhost, records, "a2")
    try:
        wait_for(done(records, "r", 30), 40, "30 tasks done")
        # Then the limit held across the restart, and still 5 tokens circulate
        times = start_times(records, "r")
        assert busiest_second(times) <= 7, times
        assert times[-1] - times[0] >= 4.5, times
        wait_for(lambda: broker.counts(BUCKET.token_queue)[0] == 5, 5, "the 5 tokens back")
        assert broker.counts(BUCKET.wait_queue)[0] == 0
        assert pool.stop() == 0
    finally:
        pool.kill()


@pytest.mark.timeout(120)
def test_junk_and_forged_tokens_neither_stop_it_nor_raise_the_rate(broker, workdir, vhost,
                                                                    records, fresh_bucket):
    # Given a pool of 8 workers under rate_limit 5/s, its bucket full
    pool = start_workers(workdir, vhost, records, "a", processes=8)
    try:
        consumers(broker, 8)
        full_bucket(broker)
        channel = broker.connection.channel()   # no confirms: a full queue drops these
        # When someone floods the token and wait queues with junk and forged tokens
        # while 30 tasks run
        submit(broker, 30, "h")
        deadline = time.monotonic() + 5
        sent = 0
        while time.monotonic() < deadline:
            for queue in (BUCKET.token_queue, BUCKET.wait_queue):
                channel.basic_publish("", queue, ratelimits.TOKEN_BODY)
                channel.basic_publish("", queue, b"junk \x00\xff" * 50,
                                      pika.BasicProperties(headers={"x": "y" * 100}))
                channel.basic_publish("", queue, b"", pika.BasicProperties(expiration="0"))
            sent += 6
            broker.connection.process_data_events(0.01)
        wait_for(done(records, "h", 30), 60, "30 tasks done")
        # Then every task ran, no 1-second window held more than 7 starts (forged tokens
        # past the limit are dropped where they would be spent), no worker died
        times = start_times(records, "h")
        assert busiest_second(times) <= 7, (sent, times)
        assert "Traceback" not in pool.log()
        assert len(pool.children()) == 8
        # and the bucket comes back to 5 tokens (a repair adds what the junk displaced)
        wait_for(lambda: broker.counts(BUCKET.token_queue)[0] +
                 broker.counts(BUCKET.wait_queue)[0] <= 5, 10, "no more than 5 tokens")
        assert pool.stop() == 0
    finally:
        pool.kill()


@pytest.mark.parametrize("value", ["0/s", "5/d", "5", "1e3/s", "5/s 5/m"])
@pytest.mark.timeout(60)
def test_a_bad_rate_limit_refuses_to_start_naming_file_section_and_option(workdir, vhost,
                                                                           value):
    path = f"{workdir}/bad.ini"
    with open(path, "w") as f:
        f.write(config_text(vhost, f"[recorder]\nworkers: 1\nrate_limit: {value}\n",
                            status_dir=f"{workdir}/run"))
    run = subprocess.run([TASKQUEUE, "workerpool", "--config", path, "--log", "stderr"],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2, run.stderr
    assert f"{path}: [recorder] rate_limit = {value!r}: expected {ratelimits.RULE}" in run.stderr


@pytest.mark.timeout(60)
def test_a_task_whose_deadline_passes_while_it_waits_for_its_turn_does_not_start(
        broker, workdir, vhost, records, client):
    # Given one worker at 1 task a second
    limit = RateLimit(1, "s")
    pool = start_workers(workdir, vhost, records, "expiry", processes=1, limit=limit)
    try:
        consumers(broker, 1)
        full_bucket(broker, Bucket("recorder", limit))
        # When a task takes the second's token, and the next may wait only half a second
        client.submit("recorder", {"id": "first"})
        late = client.submit("recorder", {"id": "late"}, expires=0.5)
        client.submit("recorder", {"id": "patient"}, expires=60)
        # Then the one after it runs, the late one never starts: it expired waiting
        wait_for(lambda: "patient" in records.ids(), 20, "the patient task")
        assert set(records.ids("start")) == {"first", "patient"}
        pool.wait_log(rf"task {late} \(delivery \d+\) not run: expired \d+\.\d+s before it "
                      rf"could start")
    finally:
        pool.stop()
