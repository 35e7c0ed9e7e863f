"""What the commands print shows every character of a message id, a queue name or a
header a publisher chose, and lets none of them act on the operator's terminal."""
import os

from taskqueue.cli import dead, status
from taskqueue.cli.dead import DeadLetter

from test_overview import HEALTHY_COUNTS, answer_of, view_of

#: A forged id or header: clears the screen, sets the title, moves the cursor, adds a line.
HOSTILE = "x\x1b[2J\x1b]0;pwned\x07\r\nforged\u202e\x9b"
SHOWN = "x\\x1b[2J\\x1b]0;pwned\\x07\\r\\nforged\\u202e\\x9b"


def controls(text):
    """The control characters of printed text, other than its line breaks."""
    return sorted({c for line in text.split("\n") for c in line if not c.isprintable()})


def test_dead_list_table_escapes_every_field_a_publisher_chose():
    letter = DeadLetter(id=HOSTILE, message_id=HOSTILE, worker_type=HOSTILE, reason=HOSTILE,
                        queue=HOSTILE, dead_at=None, exit=HOSTILE)
    lines = dead.listing([letter, letter], 2, now=0.0)
    assert controls("\n".join(lines)) == []
    assert len(lines) == 4      # header, two rows, footer: no line added
    assert lines[1].split(None, 4)[:4] == [SHOWN, SHOWN, "-", SHOWN]
    # the reason's white space (its CR and newline too) reads as one space, as always
    assert lines[1].split(None, 4)[4] == "x\\x1b[2J\\x1b]0;pwned\\x07 forged\\u202e\\x9b"


def test_dead_requeue_report_escapes_what_it_quotes():
    report = dead.RequeueReport(requeued=[HOSTILE], failed=[(HOSTILE, f"bad {HOSTILE}")],
                                     missing=[HOSTILE], unconfirmed=[HOSTILE], error=HOSTILE)
    text = "\n".join(report.done() + report.problems())
    assert controls(text) == []
    assert len(report.done()) == 2 and len(report.problems()) == 4


def test_status_table_escapes_queue_names_tasks_and_problems():
    answer = answer_of()
    answer["groups"][1]["children"][0]["task"] = HOSTILE
    others = {"worker_" + HOSTILE: (2, 0)}
    text = status.render(view_of([answer], HEALTHY_COUNTS, others=others))
    assert controls(text) == []
    assert f"  worker_{SHOWN}  2      0          0" in text
    assert f"  queue worker_{SHOWN} has no consumer (2 message(s) waiting)" in text
    assert f"recorder#0    101  busy     {SHOWN}" in text
    assert text.startswith(f"taskqueue-run: pid {os.getpid()}")


class _Out:
    """A stdout: a terminal or not, text and bytes written to one record."""

    def __init__(self, terminal):
        import io
        self.buffer, self._terminal = io.BytesIO(), terminal

    def isatty(self):
        return self._terminal

    def write(self, text):
        self.buffer.write(text.encode())

    def flush(self):
        pass


def test_submit_wait_prints_a_reply_escaped_to_a_terminal_and_as_it_came_to_a_pipe():
    from taskqueue.cli.tools import print_reply
    reply = f"line one {HOSTILE}\nline two ÿ ".encode() + b"\xff"
    terminal, pipe = _Out(True), _Out(False)
    print_reply(reply, terminal)
    print_reply(reply, pipe)
    assert pipe.buffer.getvalue() == reply + b"\n"          # the program's data, untouched
    shown = terminal.buffer.getvalue().decode()
    assert controls(shown) == []
    assert shown == f"line one {SHOWN.replace(chr(92) + 'n', chr(10))}\nline two ÿ \\xff\n"
