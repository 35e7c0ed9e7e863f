"""`taskqueue status` starts rabbitmqctl before it asks the broker and reads its listing
after (queuelist.Listing): real processes on PATH stand for rabbitmqctl here, to give the
answers a real one gives only by accident (a queue made while it lists, a hang, junk)."""
import os
import stat

import pytest

from taskqueue.cli import queuelist, status
from taskqueue.host.config import AmqpSettings
from support import wait_for

SETTINGS = AmqpSettings()   # localhost: a node rabbitmqctl could ask


def fake_rabbitmqctl(tmp_path, monkeypatch, body):
    """A `rabbitmqctl` first on PATH: a shell script; each call appends a line to `calls`."""
    script = tmp_path / "rabbitmqctl"
    script.write_text(f"#!/bin/sh\necho $$ >> {tmp_path}/calls\n{body}\n")
    script.chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    return tmp_path / "calls"


def calls(path):
    return path.read_text().split() if path.exists() else []


def test_a_queue_made_while_rabbitmqctl_listed_is_listed_again_not_called_another_node(
        tmp_path, monkeypatch):
    # Given a rabbitmqctl whose first listing lacks worker_new (made after it listed)
    calls_file = fake_rabbitmqctl(tmp_path, monkeypatch, f"""
if [ $(wc -l < {tmp_path}/calls) -eq 1 ]; then echo '[{{"name":"taskqueue"}}]'
else echo '[{{"name":"taskqueue"}},{{"name":"worker_new"}}]'; fi""")
    listing = queuelist.Listing(SETTINGS, 10)
    # When status counted worker_new after the listing started
    counts = {"taskqueue": (0, 1), "worker_new": (0, 1)}
    others, listed = status.other_worker_queues(SETTINGS, 10, counts, listing)
    # Then a second listing, started after the counts, settles it: no contradiction
    assert listed == {"source": "rabbitmqctl", "error": None}
    assert others == set() and len(calls(calls_file)) == 2


def test_a_listing_that_still_lacks_a_counted_queue_is_another_nodes(tmp_path, monkeypatch):
    calls_file = fake_rabbitmqctl(tmp_path, monkeypatch, """echo '[{"name":"taskqueue"}]'""")
    counts = {"taskqueue": (0, 1), "worker_x": (3, 0)}
    others, listed = status.other_worker_queues(SETTINGS, 10, counts,
                                                queuelist.Listing(SETTINGS, 10))
    assert others == set() and listed["source"] is None
    assert listed["error"].startswith("rabbitmqctl answers for another node than the broker: "
                                      "it does not list worker_x (as root on the broker's host")
    assert len(calls(calls_file)) == 2


def test_a_rabbitmqctl_that_hangs_is_given_up_on_in_time_and_killed(tmp_path, monkeypatch):
    # Given a rabbitmqctl that never answers
    calls_file = fake_rabbitmqctl(tmp_path, monkeypatch, "exec sleep 60")
    listing = queuelist.Listing(SETTINGS, 1)
    # When its names are asked for, Then Unlisted says how long it was given
    with pytest.raises(queuelist.Unlisted, match=r"^rabbitmqctl did not answer within 1s$"):
        listing.names()
    # and the process is gone (killed and reaped, not left behind)
    pid = int(calls(calls_file)[0])
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 5, "the hung rabbitmqctl gone")


def test_status_abandons_a_listing_it_no_longer_needs(tmp_path, monkeypatch):
    calls_file = fake_rabbitmqctl(tmp_path, monkeypatch, "exec sleep 60")
    listing = queuelist.Listing(SETTINGS, 30)
    wait_for(lambda: calls(calls_file), 5, "rabbitmqctl started")
    listing.abandon()
    pid = int(calls(calls_file)[0])
    assert not os.path.exists(f"/proc/{pid}")


@pytest.mark.parametrize("body, reason", [
    ("echo 'Error: unable to perform an operation on node' >&2; exit 69",
     "rabbitmqctl failed (exit 69): Error: unable to perform an operation on node"),
    ("printf '\\033[31m[{\"name\": 7}]'", "rabbitmqctl answered something else than a list"),
    ("head -c 100000 /dev/zero | tr '\\0' x", "rabbitmqctl answered something else than a list"),
])
def test_a_failing_or_hostile_rabbitmqctl_is_said_not_believed(tmp_path, monkeypatch, body,
                                                               reason):
    fake_rabbitmqctl(tmp_path, monkeypatch, body)
    counts = {"taskqueue": (0, 1)}
    others, listed = status.other_worker_queues(SETTINGS, 10, counts,
                                                queuelist.Listing(SETTINGS, 10))
    assert others == set() and listed["source"] is None
    assert listed["error"].startswith(reason), listed["error"]
    assert len(listed["error"]) < 400     # a long answer is cut, not quoted whole
