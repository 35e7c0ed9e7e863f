"""Client.submit's one connection served by an I/O thread (broker/submitline.py), on the
real broker: many threads at once, a connection closed under them, os.fork(), and the
thread's end with its client's."""
import gc
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from support import BROKER_HOST, stream_events, wait_for
from taskqueue.client import Client, ConnectionLost

pytestmark = pytest.mark.timeout(120)


def connections_named(name):
    out = subprocess.run(["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
                         capture_output=True, text=True, check=True).stdout
    return [line.split("\t", 1)[0] for line in out.splitlines() if name in line]


def unique_name(what):
    return f"tq-test-{what}-{os.getpid()}-{time.monotonic_ns()}"


def submitting(client, threads, per_thread, go=None):
    """Start `threads` threads each submitting `per_thread` tasks [thread, n]; returns
    (threads, {(thread, n): id} of those confirmed, errors)."""
    ids, errors = {}, []

    def submit(thread):
        try:
            for n in range(per_thread):
                if go is not None:
                    go(thread, n)
                ids[(thread, n)] = client.submit("recorder", [thread, n])
        except Exception as exc:     # reported by the test
            errors.append(exc)
    started = [threading.Thread(target=submit, args=(t,), daemon=True) for t in range(threads)]
    for thread in started:
        thread.start()
    return started, ids, errors


def joined(threads, seconds):
    deadline = time.monotonic() + seconds
    for thread in threads:
        thread.join(max(0, deadline - time.monotonic()))
    return not any(thread.is_alive() for thread in threads)


def test_sixteen_threads_submitting_at_once_share_one_connection_and_each_task_arrives_once(
        broker, vhost, amqp_port):
    name = unique_name("sixteen")
    with Client(host=BROKER_HOST, port=amqp_port, vhost=vhost, name=name) as client:
        # When 16 threads submit 100 tasks each, at the same time, through one Client
        threads, ids, errors = submitting(client, 16, 100)
        assert joined(threads, 90)
        # Then each was confirmed, with an id of its own
        assert errors == []
        assert len(ids) == 1600 and len(set(ids.values())) == 1600
        # on a single connection (the threads opened none of their own)
        assert len(connections_named(name)) == 1
    # And each arrived exactly once, as submitted
    delivered = wait_for(lambda: (lambda got: got if len(got) >= 1600 else None)(
        broker.drain("taskqueue")), 20, "1600 tasks")
    got = {props.message_id: tuple(json.loads(body)) for props, body in delivered}
    assert len(delivered) == 1600
    assert got == {task_id: key for key, task_id in ids.items()}


def test_a_submit_connection_closed_under_eight_threads_loses_no_confirmed_task(
        broker, vhost, amqp_port):
    name = unique_name("killed")
    closed = threading.Event()

    def close_it_once(thread, n):
        if thread == 0 and n == 50 and not closed.is_set():
            closed.set()
            [pid] = connections_named(name)
            subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "closed by the test"],
                           check=True)
    with Client(host=BROKER_HOST, port=amqp_port, vhost=vhost, name=name) as client:
        client.submit("recorder", ["warm", 0])
        # When the broker closes the submit connection while 8 threads submit
        threads, ids, errors = submitting(client, 8, 200, go=close_it_once)
        # Then no thread hangs, and each ends its tasks (a task interrupted twice may
        # fail ConnectionLost: none else)
        assert joined(threads, 90)
        assert closed.is_set()
        assert all(isinstance(error, ConnectionLost) for error in errors), errors
        assert len(ids) + len(errors) >= 50
    # And each confirmed task arrived (at least once: one interrupted is sent again)
    wanted = set(ids.values())
    arrived = set()

    def all_arrived():
        arrived.update(props.message_id for props, _ in broker.drain("taskqueue"))
        return wanted <= arrived
    wait_for(all_arrived, 20, lambda: f"{len(wanted - arrived)} confirmed tasks missing")


FORKED = textwrap.dedent("""
    import json, os, sys
    from taskqueue.client import Client
    client = Client(host=sys.argv[1], port=int(sys.argv[2]), vhost=sys.argv[3],
                    name=sys.argv[4])
    ids = [client.submit("recorder", "parent before")]
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(read)
            got = [client.submit("recorder", f"child {n}") for n in range(5)]
            os.write(write, json.dumps(got).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        ids += json.loads(pipe.read() or "[]")
    _, status = os.waitpid(child, 0)
    ids.append(client.submit("recorder", "parent after"))
    client.close()
    print(json.dumps({"ids": ids, "status": status}))
""")


def test_a_client_used_in_a_forked_child_submits_on_its_own_connection_and_the_parents_goes_on(
        broker, vhost, amqp_port):
    name = unique_name("fork")
    out = subprocess.run([sys.executable, "-c", FORKED, BROKER_HOST, str(amqp_port), vhost, name],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    # The child's 5 tasks were confirmed, and the parent's connection survived the child
    assert result["status"] == 0 and len(result["ids"]) == 7, (result, out.stderr)
    delivered = broker.drain("taskqueue")
    assert sorted(props.message_id for props, _ in delivered) == sorted(result["ids"])
    assert sorted(json.loads(body) for _, body in delivered) == sorted(
        ["parent before", "parent after"] + [f"child {n}" for n in range(5)])
    wait_for(lambda: not connections_named(name), 20, "every connection closed")


def test_threads_that_end_leave_nothing_and_a_collected_client_closes_its_connection(
        broker, vhost, amqp_port):
    name = unique_name("collected")
    client = Client(host=BROKER_HOST, port=amqp_port, vhost=vhost, name=name)
    threads, ids, errors = submitting(client, 4, 10)
    assert joined(threads, 30) and errors == [] and len(ids) == 40
    # The threads are gone: one connection, the client's, stays
    assert len(connections_named(name)) == 1
    io_threads = [t for t in threading.enumerate() if t.name == f"{name} (submit) I/O"]
    assert len(io_threads) == 1 and io_threads[0].daemon
    # When the client is collected, its I/O thread ends and closes the connection
    del client
    gc.collect()
    assert joined(io_threads, 20)
    wait_for(lambda: not connections_named(name), 20, "the connection closed")


NEVER_CLOSED = textwrap.dedent("""
    import sys
    from taskqueue.client import Client
    client = Client(host=sys.argv[1], port=int(sys.argv[2]), vhost=sys.argv[3],
                    name=sys.argv[4])
    print(client.submit("recorder", "one, then exit"))
""")


def test_a_script_that_submits_and_exits_without_close_still_sends_its_submitted_event(
        broker, vhost, amqp_port):
    # Given a script that submits one task and exits without closing its Client
    name = unique_name("never-closed")
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", NEVER_CLOSED, BROKER_HOST, str(amqp_port),
                          vhost, name], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    task = out.stdout.strip()
    # Then it exited promptly, its task is there, and so is its `submitted` event (which
    # the I/O thread holds back a few ms to share a message): sent at exit
    assert time.monotonic() - started < 20
    assert [props.message_id for props, _ in broker.drain("taskqueue")] == [task]
    kinds = wait_for(lambda: [e["event"] for e in stream_events(vhost, task, amqp_port)], 10,
                     "the submitted event")
    assert kinds == ["submitted"]
    wait_for(lambda: not connections_named(name), 20, "its connection closed")
