"""Time limits and recycling: task_timeout, max_tasks, max_memory."""
import re

from taskqueue.host.config import AmqpSettings

from support import wait_for, recorder_config


def test_a_task_running_past_task_timeout_is_killed_and_dead_lettered_after_the_limit(
        broker, start_pool, records):
    broker.settings = AmqpSettings(delivery_limit=2)
    pool = start_pool(recorder_config(records, extra="task_timeout: 1\n"),
                      amqp_extra="delivery_limit: 2\n")
    broker.submit("recorder", {"id": "hang", "sleep": 60}, message_id="m-hang")
    broker.submit("recorder", {"id": "quick"})
    kills = pool.wait_log(r"recorder#0 pid=\d+: task m-hang still running after task_timeout 1s; "
                          r"killing the process", count=2, timeout=30)
    assert len(kills) >= 2
    pool.wait_log(r"recorder#0 pid=\d+ killed by SIGKILL \(task_timeout\)")
    dead = wait_for(lambda: broker.drain("taskqueue_dead"), 30, "the hanging task dead-lettered")
    assert dead[0][0].message_id == "m-hang"
    assert dead[0][0].headers["x-taskqueue-reason"].startswith("delivery limit 2 reached")
    assert dead[0][0].headers["x-taskqueue-exit"].endswith(
        "killed by SIGKILL (task_timeout) during task m-hang")
    wait_for(lambda: records.ids() == ["quick"], 20, "the quick task done")
    assert pool.stop() == 0


def test_a_process_is_replaced_after_max_tasks_without_losing_or_delaying_work(
        broker, start_pool, records):
    pool = start_pool(recorder_config(records, extra="max_tasks: 3\n"))
    for n in range(10):
        broker.submit("recorder", {"id": f"t{n}"})
    done = wait_for(lambda: len(records.ids()) == 10 and records.all(), 30, "10 tasks done")
    per_pid = {}
    for record in done:
        per_pid[record["pid"]] = per_pid.get(record["pid"], 0) + 1
    assert sorted(per_pid.values()) == [1, 3, 3, 3]
    assert len(pool.wait_log(r"max_tasks 3 reached: this process is replaced", count=3)) == 3
    # A planned restart: each recycled process is replaced at once, never backed off.
    # (A broker that refuses a brand-new consumer, as RabbitMQ 4.0 under load may with
    # 541 INTERNAL_ERROR, costs that process a restart of its own: not the recycling's.)
    log = pool.log()
    recycled = re.findall(r"recorder#0 pid=(\d+) exit 7 ", log)
    assert len(recycled) == 3, log
    for pid in recycled:
        assert re.search(rf"recorder#0 pid={pid} RUNNING -> STARTING", log), log
    assert pool.stop() == 0


def test_a_process_over_max_memory_is_replaced_after_its_task(broker, start_pool, records):
    pool = start_pool(recorder_config(records, extra="max_memory: 200\n"))
    broker.submit("recorder", {"id": "big", "alloc": 300})
    broker.submit("recorder", {"id": "after"})
    done = wait_for(lambda: len(records.ids()) == 2 and records.all(), 30, "both tasks done")
    big = next(r for r in done if r["id"] == "big")
    # No task starts in the process after its big one. (Not simply "after" in another
    # process: a process that gave both back before running either, as a worker closing
    # under load may, gets them again in the order the broker returns them: a quorum
    # queue may return "after" first, and one process then rightly runs both.)
    later = [r for r in records.all("start") if r["pid"] == big["pid"] and r["time"] > big["time"]]
    assert not later, (big, records.all("start"))
    pool.wait_log(r"max_memory 200 MiB exceeded \(\d+ MiB resident\): this process is replaced")
    assert pool.stop() == 0
