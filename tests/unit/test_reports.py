"""The child → supervisor report line: what is written, when, and how it is read back."""
import os
import time

import pytest
from hypothesis import given, settings, strategies as st

from taskqueue.supervision.child import ChildContext
from taskqueue.supervision.lifecycle import parse_done
from taskqueue.supervision.reports import EVENTS, LINE_MAX, ReportReader, parse, printable

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
    ctx.busy("task-1")
    assert pending(r) == "busy task-1\n"
    ctx.done("ack", 0.25)
    assert ctx.holding and pending(r) == ""
    ctx.busy("task-2")
    assert not ctx.holding
    assert pending(r) == "done ack 0.250000\nbusy task-2\n"


def test_flush_writes_a_held_done_once(pipe):
    r, w = pipe
    ctx = ChildContext("t#0", w, None)
    ctx.done("raised", 1.5)
    ctx.flush()
    ctx.flush()
    assert pending(r) == "done raised 1.500000\n"


def test_a_child_s_lines_name_no_pid_the_supervisor_knows_whose_pipe_it_reads(pipe):
    r, w = pipe
    ChildContext("t#0", w, None).ready()
    assert pending(r) == "ready \n"


def test_reader_turns_complete_lines_into_reports_and_skips_foreign_lines(pipe):
    r, w = pipe
    reader = ReportReader(r)
    os.write(w, b"busy k1\nplugin print output\ndone ack 0.1\n12 busy k2\nrea")
    assert reader.read() == [("busy", "k1"), ("done", "ack 0.1")]
    os.write(w, b"dy\n")
    assert reader.read() == [("ready", "")]
    assert reader.dropped == 2 and not reader.eof


def test_reader_drops_an_overlong_line_and_resumes_after_its_newline(pipe):
    r, w = pipe
    reader = ReportReader(r)
    os.write(w, b"busy " + b"x" * LINE_MAX)
    assert reader.read() == []
    os.write(w, b"y" * 1000 + b" first\nbusy k2\n")
    assert reader.read() == [("busy", "k2")]
    os.write(w, b"busy " + b"z" * (LINE_MAX - 5) + b"\n")     # LINE_MAX exactly: kept
    assert reader.read() == [("busy", "z" * (LINE_MAX - 5))]


def test_a_line_without_newline_neither_grows_the_reader_nor_slows_it(pipe):
    # Seen on fe425d5: a child writing without newlines grew the supervisor to
    # 20 MiB in 2.7 s, each read copying all it had kept.
    r, w = pipe
    reader = ReportReader(r)
    chunk = b"x" * 65536
    started = time.monotonic()
    for _ in range(320):                       # 20 MiB
        os.write(w, chunk)
        assert reader.read() == []
        assert len(reader._partial) <= LINE_MAX
    assert time.monotonic() - started < 2.0
    os.write(w, b"\nready\n")
    assert reader.read() == [("ready", "")]


def test_reader_sees_the_end_of_the_pipe():
    r, w = os.pipe()
    reader = ReportReader(r)
    os.write(w, b"ready\n")
    os.close(w)
    assert reader.read() == [("ready", "")]
    assert reader.eof
    reader.close()
    assert reader.fd is None


@pytest.mark.parametrize("raw, shown", [
    ("k1", "k1"), ("a\x1b[2Jb", "a\\x1b[2Jb"), ("x\ry", "x\\ry"), ("t\u200bz", "t\\u200bz"),
    ("caf\u00e9", "caf\u00e9"),
])
def test_details_are_made_printable_before_they_reach_logs_or_status(pipe, raw, shown):
    r, w = pipe
    reader = ReportReader(r)
    os.write(w, f"broker {raw}\n".encode())
    assert reader.read() == [("broker", shown)]
    assert printable(raw) == shown


@pytest.mark.parametrize("detail, parsed", [
    ("ack 0.250000", ("ack", 0.25)),
    ("dead 0.000000", ("dead", 0.0)),
    ("raised 12", ("raised", 12.0)),
    ("ack", None), ("", None), ("ack -1", None), ("ack inf", None), ("ack nan", None),
    ("acked 1.0", None), ("ack 1.0 extra", None),
])
def test_done_detail_is_an_outcome_and_a_duration(detail, parsed):
    assert parse_done(detail) == parsed


_lines = st.one_of(
    st.builds(lambda event, detail: f"{event} {detail}".encode("utf-8", "surrogatepass"),
              st.sampled_from(EVENTS), st.text(max_size=60)),
    st.binary(max_size=40),                                      # noise, foreign output
    st.integers(LINE_MAX - 8, 3 * LINE_MAX).map(lambda n: b"busy " + b"x" * n),   # overlong
).filter(lambda line: b"\n" not in line)


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(_lines, max_size=12), cuts=st.lists(st.integers(0, 1 << 14), max_size=8))
def test_reader_takes_exactly_the_well_formed_short_lines_however_the_stream_is_cut(lines, cuts):
    stream = b"".join(line + b"\n" for line in lines)
    expected = [parse(line) for line in lines if len(line) <= LINE_MAX and parse(line)]
    r, w = os.pipe()
    try:
        reader, got = ReportReader(r), []
        points = sorted({min(cut, len(stream)) for cut in cuts} | {0, len(stream)})
        for start, end in zip(points, points[1:]):
            for piece in range(start, end, 16384):   # never more than the pipe holds
                os.write(w, stream[piece:min(end, piece + 16384)])
                got += reader.read()
        assert got == expected
        assert all(detail.isprintable() for _, detail in got)
        assert len(reader._partial) <= LINE_MAX
    finally:
        os.close(r)
        os.close(w)
