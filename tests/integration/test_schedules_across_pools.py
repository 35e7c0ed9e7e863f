"""Periodic tasks across pools (runtime/scheduler.py): two supervisors on one vhost fire
each slot of a schedule once, and the other takes over when the leader's pool is killed.
The scheduler's logic in this process (DST, missed slots): test_scheduler.py."""
import json
import os
import re
import subprocess
import time

import pytest

from support import BROKER_HOST, TASKQUEUE, alive, config_text, declare_one_hop, wait_for
from taskqueue.protocol import firings, plans

EVERY = 2
SCHEDULE = f'[DEFAULT]\nworkers: 0\n\n[schedules]\ntick: every {EVERY}s recorder {{"n": 1}}\n'
LEADING = r"schedule tick: leading it"


class Firings:
    """The scheduled tasks as they reach `taskqueue` (one hop, no worker queue: through the
    alternate exchange; no dispatcher runs), with the time each was seen."""

    def __init__(self, broker):
        self.broker = broker
        self.seen = []      # (message id, monotonic time)

    def collect(self, seconds):
        """Take what arrives during `seconds` (the broker's consumer, event by event)."""
        deadline = time.monotonic() + seconds
        for method, props, _ in self.broker.channel.consume(
                "taskqueue", auto_ack=True, inactivity_timeout=0.2):
            if method is not None:
                self.seen.append((props.message_id, time.monotonic()))
            if time.monotonic() >= deadline:
                break
        self.broker.channel.cancel()

    def ids(self):
        return [task for task, _ in self.seen]

    def slots(self):
        return sorted(firings.slot_of_message_id(task) for task in self.ids())


def pool_config(workdir, n):
    status = os.path.join(workdir, f"status{n}")
    os.makedirs(status, mode=0o755, exist_ok=True)
    return SCHEDULE + f"\n[supervisor]\nstatus_dir: {status}\n"


def leader_of(pools):
    leading = [pool for pool in pools if re.search(LEADING, pool.log())]
    return leading[0] if len(leading) == 1 else None


@pytest.mark.timeout(120)
def test_two_pools_fire_each_slot_once_and_the_other_takes_over_when_the_leader_is_killed(
        broker, start_pool, workdir, vhost):
    pools = [start_pool(pool_config(workdir, n), command="workerpool", own_status_dir=False)
             for n in (1, 2)]
    declare_one_hop(broker.channel)     # where the tasks go: taskqueue, which nobody consumes
    leader = wait_for(lambda: leader_of(pools), 30, lambda: "one pool leading tick\n" + "\n".join(
        pool.log()[-3000:] for pool in pools))
    other = pools[1 - pools.index(leader)]
    broker.drain("taskqueue")
    seen = Firings(broker)
    seen.collect(20)
    ids = seen.ids()
    assert 9 <= len(ids) <= 11, ids
    assert len(set(ids)) == len(ids), ids
    slots = seen.slots()
    assert all(b - a == EVERY for a, b in zip(slots, slots[1:])), ids
    assert all(task.startswith("sched:tick:") for task in ids)
    # The leader's whole pool killed: its connection goes with its scheduler child.
    scheduler_pids = leader.children()
    leader.kill()
    killed = time.monotonic()
    wait_for(lambda: not any(alive(pid) for pid in scheduler_pids), 10, "the killed children gone")
    seen.collect(12)
    after = [at - killed for _, at in seen.seen if at > killed]
    assert after and after[0] <= 10, (after, other.log()[-2000:])
    print(f"\nfirst scheduled task {after[0]:.1f}s after the leader's pool was killed")
    other.wait_log(LEADING, timeout=1)
    ids = seen.ids()
    assert len(set(ids)) == len(ids), ids
    # `taskqueue schedules` says who leads now: the other pool's scheduler.
    out = subprocess.run([TASKQUEUE, "schedules", "--config", other.config_path, "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    [row] = json.loads(out.stdout)["schedules"]
    assert row["lead"]["held"] and row["source"] == "config"
    holder_pid = int(row["lead"]["holder"].rpartition(" ")[2])
    assert holder_pid in other.children()
    assert row["last"] >= firings.slot_id(seen.slots()[-1])     # ISO times sort as text
    # Its history: submitted by the scheduler (the events stream, read from its slot's time).
    out = subprocess.run([TASKQUEUE, "task", "--config", other.config_path, "--json", ids[-1]],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["event"] for line in out.stdout.splitlines()] == ["submitted"]
    assert other.stop() == 0


def test_taskqueue_schedules_shows_this_hosts_schedules_other_pools_and_who_leads(
        broker, workdir, vhost, broker_port):
    from taskqueue.broker import amqp, schedulelog
    from taskqueue.host.config import AmqpSettings
    config = os.path.join(workdir, "schedules.ini")
    with open(config, "w") as f:
        f.write(config_text(vhost, '[DEFAULT]\nworkers: 0\n\n[schedules]\n'
                                   'nightly: 30 2 * * * recorder\nnightly.timezone: Europe/Berlin\n',
                            port=broker_port))

    def shown(*extra):
        out = subprocess.run([TASKQUEUE, "schedules", "--config", config, *extra],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout
    # Nothing ever fired on the vhost, nobody leads
    text = shown()
    [line] = [line for line in text.splitlines() if line.startswith("nightly ")]
    assert "30 2 * * * (Europe/Berlin)" in line and "config" in line
    assert line.split()[-3:] == ["never", "not", "held"], text
    # Another pool leads a schedule this host does not have, and fired it; junk beside it;
    # this test process leads nightly (its lead queue, exclusive to its connection).
    session = amqp.Session(AmqpSettings(host=BROKER_HOST, port=broker_port, vhost=vhost),
                           "test other pool").open()
    try:
        schedulelog.declare_stream(session)
        schedulelog.publish_record(session, firings.record("elsewhere", firings.LEAD, None,
                                                           who="db1 pid 77"))
        schedulelog.publish_record(session, firings.record("elsewhere", firings.FIRED,
                                                           1_900_000_000, who="db1 pid 77"))
        schedulelog.publish_record(session, b"\x1b[31mnot a record")
        session.declare_plan(plans.lead_queue("nightly"), any_refusal=True)
        doc = json.loads(shown("--json"))
        rows = {row["name"]: row for row in doc["schedules"]}
        assert rows["nightly"]["lead"]["held"] and rows["nightly"]["last"] is None
        assert rows["elsewhere"]["source"].startswith("another pool")
        assert rows["elsewhere"]["last"] == firings.slot_id(1_900_000_000)
        assert not rows["elsewhere"]["lead"]["held"]
        assert rows["elsewhere"]["lead"]["last_holder"] == "db1 pid 77"
        assert doc["junk_records"] == 1
        text = shown()
        assert "\x1b" not in text and "1 records of taskqueue_schedules" in text
        assert "not held (last: db1 pid 77)" in text
    finally:
        session.close()
