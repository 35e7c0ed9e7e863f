"""Forged ids, queue names and x-taskqueue-* headers reach neither a log nor a terminal
raw: a real pool's log, and the real `dead list` and `status` commands."""
import os
import pty
import subprocess

import pika

from support import TASKQUEUE, recorder_config, wait_for
from taskqueue.host.config import AmqpSettings
from taskqueue.protocol.topology import queue_arguments

#: Clears the screen, sets the terminal's title, returns the cursor, starts a forged line.
HOSTILE = "x\x1b[2J\x1b]0;pwned\x07\r\n2026-01-01 forged ERROR: \u202e\x9b"
SHOWN = "x\\x1b[2J\\x1b]0;pwned\\x07\\r\\n2026-01-01 forged ERROR: \\u202e\\x9b"


def controls(text):
    """The control characters of `text` other than its line breaks."""
    return sorted({c for line in text.split("\n") for c in line if not c.isprintable()})


def run(*args):
    return subprocess.run([TASKQUEUE, *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_a_forged_dead_letter_is_listed_escaped(broker, start_pool):
    # Given a dead letter whose id and taskqueue headers a publisher forged
    broker.publish_raw(b"{}", queue="taskqueue_dead", message_id=HOSTILE, headers={
        "x-taskqueue-reason": HOSTILE, "x-taskqueue-queue": "worker_" + HOSTILE,
        "x-taskqueue-worker-type": HOSTILE, "x-taskqueue-exit": HOSTILE})
    pool = start_pool("[DEFAULT]\nworkers: 0\n", command="workerpool")
    # When the operator lists the dead letters
    out = run("dead", "list", "--config", pool.config_path)
    # Then every field shows, escaped, and nothing acts on the terminal
    assert out.returncode == 0, out.stderr
    assert controls(out.stdout + out.stderr) == [], out.stdout
    lines = out.stdout.splitlines()
    assert len(lines) == 3 and lines[1].startswith("x?[2J?]0;pwned?")   # its id: one word
    assert f"worker_{SHOWN}" in lines[1] and lines[-1] == "1 dead letter in taskqueue_dead"
    # and on a terminal too (the table is cut to its width there)
    main, sub = pty.openpty()
    try:
        proc = subprocess.run([TASKQUEUE, "dead", "list", "--config", pool.config_path],
                              stdout=sub, stderr=subprocess.PIPE, timeout=60,
                              stdin=subprocess.DEVNULL)
        os.close(sub)
        shown = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(main)
    assert proc.returncode == 0
    assert controls(shown.decode().replace("\r\n", "\n")) == [], shown


def test_a_task_with_a_forged_id_and_error_leaves_only_escaped_lines_in_the_log(
        broker, start_pool, records):
    pool = start_pool(recorder_config(records), log=None,
                      amqp_extra=f"\n[logging]\ntarget: file\npath: {records.path}/tq.log\n")
    broker.submit("recorder", {"id": "forged", "raise": True}, message_id=HOSTILE)
    dead = wait_for(lambda: broker.drain("taskqueue_dead"), 30, "the raising task dead-lettered")
    assert dead[0][0].message_id == HOSTILE      # the message itself is kept as it came
    path = f"{records.path}/tq.log"
    wait_for(lambda: "raised after" in open(path).read(), 15, "the worker's line about it")
    text = open(path).read()
    assert controls(text) == [], text
    assert f"task {SHOWN} (delivery " in text
    # every line is taskqueue's: its header, then the event or a further line of it (`| `)
    assert all(" taskqueue[" in line for line in text.splitlines()), text
    assert pool.stop() == 0


def test_status_shows_a_forged_queue_name_escaped(broker, start_pool, status_dir):
    # Given a worker queue whose name a publisher chose, holding a task nobody consumes.
    # No C0 control: RabbitMQ 3.10 never answers the declare of a name with CR or LF,
    # and rabbitmqctl's JSON garbles C0 controls
    # ("\x1b" -> "\ub100"); the C1 CSI (\x9b) does what ESC [ does on many terminals.
    name = "worker_x\x9b2J\u202e\x7f\u2028"
    broker.channel.queue_declare(name, durable=True, arguments=queue_arguments(
        name, AmqpSettings(queue_type="classic")))
    try:
        broker.channel.basic_publish("", name, b"{}", pika.BasicProperties(delivery_mode=2))
        pool = start_pool("[DEFAULT]\nworkers: 0\n", command="workerpool")
        socket = os.path.join(status_dir, "taskqueue-workerpool.sock")
        wait_for(lambda: os.path.exists(socket), 15, "the supervisor's status socket")
        wait_for(lambda: broker.counts(name)[0] == 1, 15, "the task counted in the queue")
        out = run("status", "--config", pool.config_path)
        assert controls(out.stdout + out.stderr) == [], out.stdout
        shown = "worker_x\\x9b2J\\u202e\\x7f\\u2028"
        assert f"queue {shown} has no consumer (1 message(s) waiting)" in out.stdout, \
            out.stdout + out.stderr
    finally:
        broker.channel.queue_delete(name)
