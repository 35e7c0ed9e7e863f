"""`taskqueue dead list|requeue|purge`: the operator's view of taskqueue_dead, with real
dead letters made by a real pool and the real command."""
import hashlib
import json
import os
import pty
import socket
import subprocess

import pytest

from support import TASKQUEUE, config_text, recorder_config, wait_for
from taskqueue.host.config import AmqpSettings
from taskqueue.protocol.topology import queue_arguments


def run(*args, **kwargs):
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run([TASKQUEUE, *args], capture_output=True, text=True, timeout=60, **kwargs)


def listed(config):
    """The ids `dead list --json` shows, in its order."""
    out = run("dead", "list", "--json", "--config", config)
    assert out.returncode == 0, out.stderr
    return [letter["id"] for letter in json.loads(out.stdout)]


def tool_config(workdir, vhost, port=5672):
    path = f"{workdir}/tools.ini"
    with open(path, "w") as f:
        f.write(config_text(vhost, "[DEFAULT]\nworkers: 0\n", port=port))
    return path


def dead_count(broker, count, what):
    wait_for(lambda: broker.counts("taskqueue_dead")[0] == count, 30, what)


@pytest.mark.timeout(180)
def test_dead_list_shows_why_each_task_died_its_type_and_id_and_removes_nothing(
        broker, start_pool, records):
    # Given three dead letters, one of each origin: a task whose handle_task raised
    # (the broker's x-death), a poison task that killed its worker (taskqueue's
    # headers) and a malformed message the dispatcher refused
    broker.settings = AmqpSettings(delivery_limit=1)
    pool = start_pool(recorder_config(records), amqp_extra="delivery_limit: 1\n")
    broker.submit("recorder", {"id": "raises", "raise": True}, message_id="m-raises")
    dead_count(broker, 1, "the raising task dead-lettered")
    broker.submit("recorder", {"id": "poison", "exit": 9}, message_id="m-poison")
    dead_count(broker, 2, "the poison task dead-lettered")
    broker.publish_raw(b"{not json", message_id="m-bad", content_type="application/json")
    dead_count(broker, 3, "the malformed message dead-lettered")

    # When the operator lists them, Then a table shows each, in the order they died
    out = run("dead", "list", "--config", pool.config_path)
    assert out.returncode == 0, out.stderr
    rows = [line.split(None, 4) for line in out.stdout.splitlines()]
    assert rows[0] == ["ID", "TYPE", "AGE", "QUEUE", "REASON"]
    assert [row[:2] + row[3:4] for row in rows[1:4]] == [
        ["m-raises", "recorder", "worker_recorder"], ["m-poison", "recorder", "worker_recorder"],
        ["m-bad", "-", "taskqueue"]]
    assert rows[1][4] == "rejected"
    assert rows[2][4].startswith("delivery limit 1 reached: 1 processes died handling it")
    assert rows[3][4].startswith("body is not JSON")
    assert rows[4:] == [["3", "dead", "letters", "in", "taskqueue_dead"]]

    # And --json gives scripts the same facts, with the age and the body
    letters = json.loads(run("dead", "list", "--json", "--config", pool.config_path).stdout)
    assert [(x["id"], x["type"], x["queue"]) for x in letters] == [
        ("m-raises", "recorder", "worker_recorder"), ("m-poison", "recorder", "worker_recorder"),
        ("m-bad", None, "taskqueue")]
    assert letters[0]["reason"] == "rejected"
    assert letters[1]["exit"].endswith("exit 9 during task m-poison")
    assert all(0 <= x["age"] < 120 for x in letters)
    assert json.loads(letters[0]["body"]) == {"id": "raises", "raise": True}
    assert letters[2]["body"] == "{not json"
    filtered = run("dead", "list", "--json", "--type", "recorder", "--limit", "1",
                   "--config", pool.config_path)
    assert [x["id"] for x in json.loads(filtered.stdout)] == ["m-raises"]

    # And nothing was removed, nor reordered
    assert broker.counts("taskqueue_dead")[0] == 3
    assert listed(pool.config_path) == ["m-raises", "m-poison", "m-bad"]
    assert pool.stop() == 0


@pytest.mark.timeout(180)
def test_dead_requeue_by_id_gets_a_fixed_task_completed_and_leaves_the_others_dead(
        broker, start_pool, records, workdir):
    # Given two tasks dead because of a cause that is then fixed, and a malformed message
    fixed = os.path.join(workdir, "fixed")
    pool = start_pool(recorder_config(records))
    for n, name in enumerate(("a", "b"), 1):
        broker.submit("recorder", {"id": name, "raise": True, "until": fixed}, message_id=f"m-{name}")
        dead_count(broker, n, f"task {name} dead-lettered")
    broker.publish_raw(b"{not json", message_id="m-bad", content_type="application/json")
    dead_count(broker, 3, "the malformed message dead-lettered")
    open(fixed, "w").close()

    # When the operator requeues one of them by id
    out = run("dead", "requeue", "--id", "m-a", "--config", pool.config_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["requeued 1 dead letter to taskqueue:", "  m-a"]

    # Then its worker completes it, and the others stay dead, in their order
    wait_for(lambda: records.ids() == ["a"], 20, "task a completed")
    assert listed(pool.config_path) == ["m-b", "m-bad"]

    # A dead letter the dispatcher would refuse again, or an unknown id, is reported: exit 1
    bad = run("dead", "requeue", "--id", "m-bad", "--id", "m-nope", "--config", pool.config_path)
    assert bad.returncode == 1
    assert bad.stdout.splitlines() == ["requeued 0 dead letters to taskqueue"]
    assert ("m-bad not requeued, it stays in taskqueue_dead: the dispatcher would dead-letter it "
            "again: body is not JSON") in bad.stderr
    assert "no dead letter with id m-nope" in bad.stderr
    assert listed(pool.config_path) == ["m-b", "m-bad"]

    # --type takes every dead letter of that type
    out = run("dead", "requeue", "--type", "recorder", "--config", pool.config_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["requeued 1 dead letter to taskqueue:", "  m-b"]
    wait_for(lambda: sorted(records.ids()) == ["a", "b"], 20, "task b completed")
    assert listed(pool.config_path) == ["m-bad"]
    assert pool.stop() == 0


def test_dead_requeue_refuses_to_guess_which_dead_letters_are_meant(workdir, vhost):
    config = tool_config(workdir, vhost)
    none = run("dead", "requeue", "--config", config)
    assert none.returncode == 2
    assert "say which dead letters to requeue: --id ID (repeatable), --type TYPE, or --all" \
        in none.stderr
    both = run("dead", "requeue", "--all", "--type", "recorder", "--config", config)
    assert both.returncode == 2 and "--all takes every dead letter" in both.stderr


@pytest.mark.timeout(120)
def test_dead_requeue_all_routes_an_envelope_that_expired_in_taskqueue_again(
        broker, start_pool, records, workdir, vhost):
    # Given an envelope that expired in taskqueue while no dispatcher ran
    # (the dead-letter queue must exist for the broker to move it there)
    broker.channel.queue_declare("taskqueue_dead", durable=True,
                                 arguments=queue_arguments("taskqueue_dead", broker.settings))
    broker.submit("recorder", {"id": "late"}, message_id="m-late", expiration="1")
    dead_count(broker, 1, "the expired envelope dead-lettered")
    config = tool_config(workdir, vhost)
    [letter] = json.loads(run("dead", "list", "--json", "--config", config).stdout)
    assert (letter["id"], letter["reason"], letter["queue"], letter["type"]) == (
        "m-late", "expired", "taskqueue", "recorder")

    # When the pool runs and the operator requeues every dead letter
    pool = start_pool(recorder_config(records))
    wait_for(lambda: broker.counts("worker_recorder")[1] == 1, 15, "the recorder consumer")
    out = run("dead", "requeue", "--all", "--config", config)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["requeued 1 dead letter to taskqueue:", "  m-late"]

    # Then the dispatcher routes it as any envelope, and the dead queue is empty
    wait_for(lambda: records.ids() == ["late"], 20, "the expired task completed")
    assert broker.counts("taskqueue_dead")[0] == 0
    assert pool.stop() == 0


def run_on_terminal(args, answer):
    """Run the command with a terminal as stdin, typing `answer`; (code, stdout, stderr)."""
    master, slave = pty.openpty()
    try:
        process = subprocess.Popen([TASKQUEUE, *args], stdin=slave, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        os.write(master, answer.encode())
        out, err = process.communicate(timeout=60)
    finally:
        os.close(slave)
        os.close(master)
    return process.returncode, out, err


def test_dead_purge_asks_on_a_terminal_and_needs_yes_elsewhere(broker, workdir, vhost):
    config = tool_config(workdir, vhost)
    for n in range(3):
        broker.publish_raw(b"dead", queue="taskqueue_dead", message_id=f"d{n}")
    dead_count(broker, 3, "3 dead letters")

    # Without a terminal and without --yes, nothing is purged
    refused = run("dead", "purge", "--config", config)
    assert refused.returncode == 2
    assert "not on a terminal" in refused.stderr and "--yes" in refused.stderr
    assert broker.counts("taskqueue_dead")[0] == 3

    # On a terminal it asks; anything but y keeps them, and that is no failure: exit 0
    code, out, err = run_on_terminal(["dead", "purge", "--config", config], "n\n")
    assert (code, out) == (0, "nothing purged\n")
    assert "Purge 3 dead letters from taskqueue_dead? [y/N]" in err
    assert broker.counts("taskqueue_dead")[0] == 3
    code, out, err = run_on_terminal(["dead", "purge", "--config", config], "y\n")
    assert (code, out) == (0, "purged 3 dead letters from taskqueue_dead\n"), err
    assert broker.counts("taskqueue_dead")[0] == 0

    # --yes does not ask
    broker.publish_raw(b"dead", queue="taskqueue_dead")
    dead_count(broker, 1, "1 dead letter")
    out = run("dead", "purge", "--yes", "--config", config)
    assert (out.returncode, out.stdout) == (0, "purged 1 dead letter from taskqueue_dead\n")
    assert broker.counts("taskqueue_dead")[0] == 0


def closed_port():
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("action", [["list"], ["requeue", "--all"], ["purge", "--yes"]])
def test_dead_commands_exit_4_naming_the_broker_they_cannot_reach(workdir, vhost, action):
    port = closed_port()
    out = run("dead", *action, "--config", tool_config(workdir, vhost, port=port))
    assert out.returncode == 4
    assert f"cannot connect to the broker: 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr


def test_more_dead_letters_than_one_consumer_may_hold_are_all_read_and_kept_in_order(
        broker, vhost, monkeypatch):
    # In this process, with the real broker: a consumer may hold PREFETCH dead
    # letters (65 535; 10 here, to stay quick); past that, another takes over.
    from taskqueue.cli import dead
    monkeypatch.setattr(dead, "PREFETCH", 10)
    envelope = b'{"worker_type": "recorder", "workitem": 1}'
    for n in range(25):
        broker.publish_raw(envelope if n in (3, 17, 24) else b"dead", queue="taskqueue_dead",
                           message_id=f"d{n:02}")
    dead_count(broker, 25, "25 dead letters")
    settings = AmqpSettings(host="127.0.0.1", vhost=vhost)
    letters, count = dead.list_dead(settings)
    assert count == 25
    assert [letter.id for letter in letters] == [f"d{n:02}" for n in range(25)]

    report = dead.requeue_dead(settings, ids={"d03", "d05", "d17", "d24"})
    assert report.requeued == ["d03", "d17", "d24"]
    assert report.problems() == ["d05 not requeued, it stays in taskqueue_dead: the dispatcher "
                                 "would dead-letter it again: plain-text body 'dead' has no space: "
                                 'expected "<worker_type> <workitem>", e.g. "worker1 some work"']
    assert [props.message_id for props, _ in broker.drain("taskqueue")] == ["d03", "d17", "d24"]
    assert [letter.id for letter in dead.list_dead(settings)[0]] == \
        [f"d{n:02}" for n in range(25) if n not in (3, 17, 24)]


@pytest.mark.timeout(180)
def test_a_requeued_poison_task_gets_another_delivery_limit_of_deaths(
        broker, start_pool, records, workdir):
    # Given a poison task that killed delivery_limit (2) processes and was dead-lettered
    gate = os.path.join(workdir, "gate")
    open(gate, "w").close()
    broker.settings = AmqpSettings(delivery_limit=2)
    pool = start_pool(recorder_config(records), amqp_extra="delivery_limit: 2\n")
    broker.submit("recorder", {"id": "poison", "exit": 9, "gate": gate}, message_id="m-poison")
    dead_count(broker, 1, "the poison task dead-lettered")
    assert records.ids("start").count("poison") == 2

    # When the operator requeues it (its message id is kept), held at the gate
    # until the command is done, so that the command sees it go for good
    os.unlink(gate)
    out = run("dead", "requeue", "--id", "m-poison", "--config", pool.config_path)
    assert out.returncode == 0, out.stderr
    assert broker.counts("taskqueue_dead")[0] == 0
    open(gate, "w").close()

    # Then it is dead-lettered again only after 2 more deaths, not after one
    dead_count(broker, 1, "the requeued poison task dead-lettered again")
    assert records.ids("start").count("poison") == 4
    props, _ = broker.drain("taskqueue_dead")[0]
    assert props.headers["x-taskqueue-reason"].startswith(
        "delivery limit 2 reached: 2 processes died handling it")
    assert pool.stop() == 0


def test_a_dead_letter_without_message_id_is_requeued_by_the_id_its_table_shows(
        broker, workdir, vhost):
    # Given an envelope without a message id, dead-lettered by the dispatcher
    envelope = b'{"worker_type": "recorder", "workitem": {"id": "anon"}}'
    broker.publish_raw(envelope, queue="taskqueue_dead", content_type="application/json",
                       headers={"x-taskqueue-reason": "queue 'worker_recorder' was refused",
                                "x-taskqueue-queue": "taskqueue"})
    dead_count(broker, 1, "the dead letter")
    config = tool_config(workdir, vhost)
    # When the operator lists it
    out = run("dead", "list", "--config", config)
    assert out.returncode == 0, out.stderr
    row = out.stdout.splitlines()[1].split(None, 4)
    # Then the table shows the id --json shows, and the type of its envelope
    [letter] = json.loads(run("dead", "list", "--json", "--config", config).stdout)
    assert row[0] == letter["id"] == "sha1-" + hashlib.sha1(envelope).hexdigest()
    assert row[1] == letter["type"] == "recorder"
    # And requeue takes that id
    requeued = run("dead", "requeue", "--id", row[0], "--config", config)
    assert requeued.returncode == 0, requeued.stderr
    assert requeued.stdout.splitlines() == ["requeued 1 dead letter to taskqueue:", f"  {row[0]}"]
    assert [body for _, body in broker.drain("taskqueue")] == [envelope]
    assert broker.counts("taskqueue_dead")[0] == 0


@pytest.mark.timeout(120)
def test_a_dead_letter_survives_being_listed_and_handed_back_many_times(broker, start_pool, records):
    # Given a dead letter (RabbitMQ 4.0 gives a quorum queue declared without a
    # delivery limit one of 20, and taskqueue_dead has no dead-letter target: a
    # message returned 20 times would be dropped)
    pool = start_pool(recorder_config(records))
    broker.submit("recorder", {"id": "raises", "raise": True}, message_id="m-kept")
    dead_count(broker, 1, "the raising task dead-lettered")
    # When it is taken and handed back 25 times, as 25 runs of `dead list` would do
    for _ in range(25):
        method, _, _ = broker.channel.basic_get("taskqueue_dead")
        assert method is not None, "the dead letter is gone"
        broker.channel.basic_nack(method.delivery_tag, requeue=True)
    # Then it is still there, and listed
    assert listed(pool.config_path) == ["m-kept"]
    assert pool.stop() == 0
