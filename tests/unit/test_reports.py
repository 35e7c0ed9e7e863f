"""The child → supervisor report line: what is written, when, and how it is read back."""
import os

import pytest

from taskqueue.child import ChildContext
from taskqueue.lifecycle import parse_done
from taskqueue.supervisor import Supervisor

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def pipe():
    r, w = os.pipe()
    os.set_blocking(r, False)
    yield r, w
    os.close(r)
    os.close(w)


def pending(fd):
    try:
        return os.read(fd, 65536).decode()
    except BlockingIOError:
        return ""


def test_done_is_held_until_the_next_busy_and_shares_its_write(pipe):
    r, w = pipe
    ctx = ChildContext("t#0", w, None)
    pid = os.getpid()
    ctx.busy("task-1")
    assert pending(r) == f"{pid} busy task-1\n"
    ctx.done("ack", 0.25)
    assert ctx.holding and pending(r) == ""
    ctx.busy("task-2")
    assert not ctx.holding
    assert pending(r) == f"{pid} done ack 0.250000\n{pid} busy task-2\n"


def test_flush_writes_a_held_done_once(pipe):
    r, w = pipe
    ctx = ChildContext("t#0", w, None)
    ctx.done("raised", 1.5)
    ctx.flush()
    ctx.flush()
    assert pending(r) == f"{os.getpid()} done raised 1.500000\n"


def test_supervisor_turns_one_read_into_one_event_and_skips_foreign_lines(pipe):
    r, w = pipe
    sup = Supervisor([])
    sup._reports_r = r
    os.write(w, b"12 busy k1\nplugin print output\n12 done ack 0.1\n13 rea")
    sup._take_reports()
    os.write(w, b"dy\n")
    sup._take_reports()
    assert sup.events.get_nowait() == ("reports", [("busy", 12, "k1"), ("done", 12, "ack 0.1")])
    assert sup.events.get_nowait() == ("reports", [("ready", 13, "")])
    assert sup.events.empty()


@pytest.mark.parametrize("detail, parsed", [
    ("ack 0.250000", ("ack", 0.25)),
    ("dead 0.000000", ("dead", 0.0)),
    ("raised 12", ("raised", 12.0)),
    ("ack", None), ("", None), ("ack -1", None), ("ack inf", None), ("ack nan", None),
    ("acked 1.0", None), ("ack 1.0 extra", None),
])
def test_done_detail_is_an_outcome_and_a_duration(detail, parsed):
    assert parse_done(detail) == parsed
