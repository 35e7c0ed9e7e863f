"""Hostile input among 10 000 good tasks (issue 20): what anyone who may publish to the
vhost can send, on both paths (through `taskqueue` and the dispatcher, and one hop into
`worker_marker`). Every good task is done, once; each hostile one is dead-lettered
exactly once, with its reason (every dead letter of the run is kept and matched by id);
no child restarts. Runs against the suite's own RabbitMQ node (conftest.py).
"""
import collections
import json
import re
import struct
import time

import pytest

from figures import FIGURES
from support import amqp_key, amqp_table, deep_table, wait_for
from taskqueue.broker import fielddecode
from taskqueue.broker.deadletters import MAX_RAW_KEPT
from test_faults import completions, marker_config, running_children

fielddecode.install()   # the test's own client reads them too

pytestmark = pytest.mark.timeout(600)

GOOD = 10_000
#: Each hostile kind this many times, spread among the good tasks.
REPEAT = 10
MAX_BODY = 64 * 1024


def deep_array(depth):
    inner = b""
    for _ in range(depth):
        inner = struct.pack(">I", len(inner) + 1) + b"A" + inner if inner else \
            struct.pack(">I", 0)
    return amqp_table(amqp_key("a") + b"A" + inner)


#: kind -> (raw headers table or None, extra properties, body size or None, reason pattern)
HOSTILE = {
    "deep table": (deep_table(700), {}, None,
                   r"headers not decoded: nested deeper than 32 levels \(tables and arrays\) "
                   r"\(at a\.a\.a"),
    "deep array": (deep_array(1500), {}, None,
                   r"headers not decoded: nested deeper than 32 levels .*\(at a\.\[0\]\.\[0\]"),
    "far timestamp": (amqp_table(amqp_key("when") + b"T" + struct.pack(">Q", 10**12)), {}, None,
                      r"headers not decoded: a timestamp pika cannot decode \(ValueError: "
                      r"year 33658 is out of range\) \(at when\)"),
    "wide table": (amqp_table(b"".join(amqp_key(f"{i:x}") + b"V" for i in range(10_001))), {},
                   # Which field is the one too many: RabbitMQ 3 keeps the publisher's order
                   # (2710, the last), RabbitMQ 4 its own (fff on 4.0).
                   None, r"headers not decoded: more than 10000 fields \(at [0-9a-f]+\)$"),
    "big table": (amqp_table(amqp_key("s") + b"S" + struct.pack(">I", 70_000) + b"s" * 70_000),
                  {}, None, r"headers not decoded: the table takes 70007 bytes, more than 65536 "
                            r"\(the first 61440 of their 70011 bytes kept\)$"),
    "big body": (None, {}, MAX_BODY + 1,
                 rf"body is \d+ bytes, more than \[amqp\] max_body_size \({MAX_BODY} bytes\)"),
    "text retry count": (None, {"headers": {"x-taskqueue-retries": "3"}}, None,
                         r"header x-taskqueue-retries is '3': expected a retry count"),
    "huge retry count": (None, {"headers": {"x-taskqueue-retries": 2**40}}, None,
                         r"header x-taskqueue-retries is 1099511627776: expected a retry count"),
    "text due time": (None, {"headers": {"x-taskqueue-delayed-until": "now"}}, None,
                      r"header x-taskqueue-delayed-until is 'now': expected when the task is "
                      r"due"),
}
#: Headers only taskqueue's dead letters carry: the dispatcher drops them and routes the
#: task (odd); a worker refuses a task that came one hop with them (hostile), since the
#: broker's copy would keep them were the task dead-lettered later.
FORGED = ({"headers": {"x-taskqueue-reason": "forged", "x-taskqueue-exit": "\x1b[2J",
                       "x-taskqueue-worker-type": "victim"}},
          r"headers 'x-taskqueue-exit', 'x-taskqueue-reason', 'x-taskqueue-worker-type' set "
          r"by its publisher: only taskqueue's dead letters carry them$")
#: Odd but harmless: completed like the good ones (their odd parts dropped or clamped).
ODD = {
    "priority 255": {"priority": 255},
    "not utf-8": {"raw": amqp_table(b"\x02\xff\xfe" + b"S" + struct.pack(">I", 2) + b"\xff\xfe")},
    "a publisher's x-death": {"headers": {"x-death": "not a list",
                                          "x-taskqueue-delayed-until": 1}},
}


def kinds(one_hop):
    """(the hostile kinds, the odd ones) of a run on one path."""
    hostile, odd = dict(HOSTILE), dict(ODD)
    if one_hop:
        hostile["forged dead-letter headers"] = (None, FORGED[0], None, FORGED[1])
    else:
        odd["forged dead-letter headers"] = FORGED[0]
    return hostile, odd


def messages(hostile, odd):
    """(id, kind, raw headers, properties, body padding) for the whole run, in order."""
    plan = [(f"g{n:05d}", "good", None, {}, None) for n in range(GOOD)]
    extra = [(f"{kind.replace(' ', '-')}-{n}", kind, raw, props, size)
             for kind, (raw, props, size, _) in hostile.items() for n in range(REPEAT)]
    extra += [(f"odd-{kind.replace(' ', '-')}-{n}", "odd", props.get("raw"),
               {k: v for k, v in props.items() if k != "raw"}, None)
              for kind, props in odd.items() for n in range(REPEAT)]
    step = GOOD // (len(extra) + 1)
    for i, item in enumerate(extra):
        plan.insert((i + 1) * step + i, item)
    return plan


def publish(broker, task_id, raw, props, size, one_hop):
    workitem = {"id": task_id}
    if size:
        workitem["pad"] = "p" * size
    props = dict(props, message_id=task_id)
    if raw is not None:
        props["raw_headers"] = raw
    if one_hop:
        broker.submit_one_hop("marker", workitem, **props)
    else:
        body = json.dumps({"worker_type": "marker", "workitem": workitem}).encode()
        broker.publish_raw(body, content_type="application/json", **props)


@pytest.mark.parametrize("path", ["dispatcher", "one hop"])
def test_hostile_messages_among_10000_good_tasks_are_each_dead_lettered_once_with_its_reason(
        node, broker, start_pool, record_dir, path):
    one_hop = path == "one hop"
    pool = start_pool(marker_config(record_dir), amqp_extra=f"max_body_size: {MAX_BODY}\n")
    wait_for(lambda: broker.counts("worker_marker")[1] == 4, 30, "4 workers consuming")
    wait_for(lambda: len(running_children(pool)) == 5, 30, "5 children running")
    children = running_children(pool)
    hostile_kinds, odd_kinds = kinds(one_hop)
    plan = messages(hostile_kinds, odd_kinds)
    started = time.monotonic()
    for task_id, _, raw, props, size in plan:
        publish(broker, task_id, raw, props, size, one_hop)
    published = time.monotonic() - started
    good = {task_id for task_id, kind, *_ in plan if kind in ("good", "odd")}
    hostile = {task_id: kind for task_id, kind, *_ in plan if kind in hostile_kinds}
    raws = {task_id: raw for task_id, kind, raw, *_ in plan if kind in hostile_kinds}
    # Every dead letter of the run, kept: id -> [its headers, each time it came]
    dead = collections.defaultdict(list)

    def accounted():
        for props, _ in broker.drain("taskqueue_dead"):
            dead[props.message_id].append(props.headers)
        return set(completions(record_dir)) >= good and len(dead) >= len(hostile)
    wait_for(accounted, 300, lambda: f"every task accounted for: {len(completions(record_dir))} "
             f"done, {len(dead)} dead", interval=0.5)
    # A moment for a duplicate, were there one, then the last dead letters
    wait_for(lambda: broker.counts("worker_marker")[0] == 0 == broker.counts("taskqueue")[0],
             30, "the queues empty")
    for props, _ in broker.drain("taskqueue_dead"):
        dead[props.message_id].append(props.headers)
    elapsed = time.monotonic() - started
    done = completions(record_dir)
    # Every good task done exactly once, no hostile one ever run
    assert set(done) == good, (set(good) - set(done), set(done) - good)
    assert [task_id for task_id, count in done.items() if count > 1] == []
    # Each hostile one dead-lettered exactly once, by the process it came to, saying why
    assert set(dead) == set(hostile), (set(dead) ^ set(hostile))
    queue = "worker_marker" if one_hop else "taskqueue"
    for task_id, kind in hostile.items():
        assert len(dead[task_id]) == 1, (task_id, len(dead[task_id]))
        [headers] = dead[task_id]
        assert re.match(hostile_kinds[kind][3], headers["x-taskqueue-reason"]), \
            (kind, headers["x-taskqueue-reason"])
        assert headers["x-taskqueue-queue"] == queue
        if raws[task_id] is not None:
            kept, sent = headers["x-taskqueue-raw-headers"], raws[task_id][:MAX_RAW_KEPT]
            # The bytes the broker delivered: RabbitMQ 4 writes a table's fields in an
            # order of its own (the wide table's), RabbitMQ 3 as they were published.
            assert kept == sent or (kind == "wide table" and sorted(kept) == sorted(sent)), \
                (kind, len(kept), len(sent))
    # No child restarted: the same ones run, each started once
    assert running_children(pool) == children
    assert len(re.findall(r"STARTING -> RUNNING", pool.log())) == 5, pool.log()[-3000:]
    FIGURES[f"hostile input among 10 000 tasks ({path})"] = {
        "good published": len(good), "good completed": len(done),
        "hostile published": len(hostile), "dead-lettered once with its reason": len(dead),
        "kinds": len(hostile_kinds), "odd but completed": len(odd_kinds) * REPEAT,
        "children restarted": 0, "seconds publishing": round(published, 1),
        "seconds": round(elapsed, 1),
    }
    assert pool.stop() == 0
