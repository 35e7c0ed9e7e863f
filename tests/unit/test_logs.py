"""logs.py: the line format, the target auto chooses, and one write per event."""
import logging
import os
import re

import pytest

from taskqueue.host import logs

HEADER = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} taskqueue\[%d\] "


@pytest.fixture
def logfile(tmp_path):
    """Log to a file as the daemons do; the root logger and the identity are restored after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    path = str(tmp_path / "taskqueue.log")
    logs.setup(logging.INFO, "file", path)
    yield path
    for handler in root.handlers:
        handler.close()
    root.handlers[:], level = saved
    root.setLevel(level)
    logs._component = logs._child = None
    logs.set_task(None)


def lines(path):
    with open(path) as f:
        return f.read().splitlines()


@pytest.mark.parametrize("identity, task, context", [
    (None, None, ""),
    (("supervisor",), None, "supervisor "),
    (("dispatcher", "dispatcher#1"), None, "dispatcher dispatcher#1 "),
    (("worker", "worker1#2"), "abc", "worker worker1#2 task=abc "),
    (("worker", "worker2/bifh1#0"), "sha1-0a1b", "worker worker2/bifh1#0 task=sha1-0a1b "),
    (("worker", "dispatcher_x/a#0"), None, "worker dispatcher_x/a#0 "),
])
def test_line_names_component_child_and_task(logfile, identity, task, context):
    if identity:
        logs.set_identity(*identity)
    logs.set_task(task)
    logging.getLogger("taskqueue.x").warning("text %d", 1)
    assert re.fullmatch(HEADER % os.getpid() + re.escape(f"{context}WARNING: text 1"),
                        lines(logfile)[-1])


def test_a_lines_own_task_goes_before_the_process_task(logfile):
    logs.set_identity("dispatcher", "dispatcher#0")
    logs.set_task("current")
    logging.getLogger("x").info("routed", extra={"task": "mine"})
    logging.getLogger("x").info("no id", extra=logs.about(type("Props", (), {"message_id": None})))
    assert lines(logfile)[-2].endswith(" dispatcher dispatcher#0 task=mine INFO: routed")
    assert lines(logfile)[-1].endswith(" dispatcher dispatcher#0 task=current INFO: no id")


@pytest.mark.parametrize("task, shown", [
    ("a b\nc\x1b", "a\\x20b\\nc\\x1b"), ("x" * 250, "x" * 200 + "..."), (42, "42"),
])
def test_task_ids_are_shown_as_one_word(task, shown):
    assert logs.context(task) == f"task={shown} "


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


def test_a_task_with_a_trace_names_it_after_the_task(logfile):
    logs.set_identity("worker", "recorder#0")
    logs.set_task("m-1", TRACE)
    logging.getLogger("plugin").info("from the plugin")
    logs.set_task(None)
    logging.getLogger("x").info("between tasks")
    assert lines(logfile)[-2].endswith(f" worker recorder#0 task=m-1 trace={TRACE} INFO: "
                                       f"from the plugin")
    assert lines(logfile)[-1].endswith(" worker recorder#0 INFO: between tasks")


def message(message_id, headers):
    return type("Props", (), {"message_id": message_id, "headers": headers})


def test_a_line_about_a_message_names_its_own_trace_not_the_process_one(logfile):
    logs.set_identity("dispatcher", "dispatcher#0")
    logs.set_task("current", "f" * 32)
    log = logging.getLogger("x")
    log.warning("traced", extra=logs.about(message("m-2", {"traceparent": TRACEPARENT})))
    log.warning("untraced", extra=logs.about(message("m-3", None)))
    assert lines(logfile)[-2].endswith(f" task=m-2 trace={TRACE} WARNING: traced")
    assert lines(logfile)[-1].endswith(" dispatcher#0 task=m-3 WARNING: untraced")


@pytest.mark.parametrize("hostile", [
    TRACEPARENT.upper(), TRACEPARENT + "\n2026-01-01 forged line", f"00-{'0' * 32}-{'1' * 16}-01",
    "ff" + TRACEPARENT[2:], TRACEPARENT.encode(), {"a": TRACEPARENT}, "\x1b[2J" * 3000, 7,
])
def test_a_hostile_traceparent_names_no_trace_and_shows_nowhere(logfile, hostile):
    logging.getLogger("x").warning("about it", extra=logs.about(message("m-4",
                                                                        {"traceparent": hostile})))
    line = lines(logfile)[-1]
    assert line.endswith(" task=m-4 WARNING: about it") and "trace=" not in line


def test_further_lines_of_an_event_repeat_the_header(logfile):
    logs.set_identity("worker", "worker1#0")
    logs.set_task("t1")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("x").exception("failed:\nsecond line")
    out = lines(logfile)
    head = f"taskqueue[{os.getpid()}] worker worker1#0 task=t1 ERROR: "
    assert out[0].endswith(head + "failed:")
    assert all(head + "| " in line for line in out[1:]), out
    assert out[1].endswith("| second line") and out[2].endswith("| Traceback (most recent call last):")
    assert out[-1].endswith("| ValueError: boom")


def test_level_leaves_out_lower_lines(tmp_path):
    path = str(tmp_path / "t.log")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.setup("warning", "file", path)
        logging.getLogger("x").info("hidden")
        logging.getLogger("x").warning("shown")
    finally:
        root.handlers[0].close()
        root.handlers[:], level = saved
        root.setLevel(level)
    assert [line.split(": ", 1)[1] for line in lines(path)] == ["shown"]


def test_file_is_appended_to_and_created_mode_0640(tmp_path, logfile):
    logging.getLogger("x").info("one")
    logs.setup(logging.INFO, "file", logfile)   # a restart
    logging.getLogger("x").info("two")
    assert [line.rsplit(" ", 1)[1] for line in lines(logfile)] == ["one", "two"]
    assert os.stat(logfile).st_mode & 0o777 == 0o640 & ~current_umask()


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_unopenable_file_raises_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        logs.setup(logging.INFO, "file", str(tmp_path / "no-such-dir" / "t.log"))


def test_processes_sharing_the_file_never_interleave_their_lines(logfile):
    # Events far larger than a stdio buffer: written in pieces, they would interleave.
    body = "\n".join("y" * 100 for _ in range(200))
    pids = []
    for n in range(4):
        pid = os.fork()
        if pid == 0:
            try:
                logs.set_identity("worker", f"worker1#{n}")
                for i in range(50):
                    logging.getLogger("x").info("event %d\n%s", i, logs.Lines(body))
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        assert os.waitpid(pid, 0)[1] == 0
    out = lines(logfile)
    assert len(out) == 4 * 50 * 201
    for start in range(0, len(out), 201):   # each event: its first line, then its 200 more
        event = out[start:start + 201]
        head = event[0][:event[0].index("INFO: ") + len("INFO: ")]
        assert re.fullmatch(r".* worker worker1#\d INFO: event \d+", event[0]), event[0]
        assert all(line == f"{head}| {'y' * 100}" for line in event[1:])


@pytest.mark.parametrize("target, terminal, journal, syslog, chosen", [
    ("auto", False, False, True, "syslog"),    # a daemon under an init script
    ("auto", True, False, True, "stderr"),     # someone at a terminal
    ("auto", False, True, True, "stderr"),     # a systemd unit: stderr is the journal
    ("auto", False, False, False, "stderr"),   # no syslog here
    ("syslog", True, False, True, "syslog"),
    ("syslog", False, False, False, "stderr"),
    ("stderr", False, False, True, "stderr"),
    ("file", True, True, True, "file"),
])
def test_choose_target(target, terminal, journal, syslog, chosen):
    assert logs.choose_target(target, terminal, journal, syslog) == chosen


def test_journal_is_recognised_by_device_and_inode(tmp_path):
    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        assert logs._is_journal(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not logs._is_journal(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not logs._is_journal(stream, {})


#: Characters a forged message id, queue name or header may carry to a log reader's terminal.
HOSTILE = "m\x1b[2J\x1b]0;pwned\x07\rforged INFO: ok\n2026-01-01 fake line\u202e\x00"


def raw_controls(text):
    """The control characters of `text` other than the line breaks between lines."""
    return sorted({c for line in text.split("\n") for c in line if not c.isprintable()})


def test_no_argument_of_any_kind_puts_a_control_character_or_a_line_into_the_log(logfile):
    # Given lines about a message whose id, queue and headers a publisher chose
    logs.set_identity("dispatcher", "dispatcher#0")
    log = logging.getLogger("taskqueue.x")
    log.warning("task %s from queue %s: headers %r", HOSTILE, HOSTILE,
                {"x-taskqueue-reason": HOSTILE})
    log.info("routed", extra={"task": HOSTILE})
    log.error("refused: %s", ValueError(HOSTILE))
    log.warning("mapping %(id)s", {"id": HOSTILE})
    log.warning(f"already formatted {HOSTILE}")
    try:
        raise RuntimeError(HOSTILE)
    except RuntimeError:
        log.exception("plugin raised")
    text = open(logfile).read()
    # Then no control character reaches the file; every line is one of taskqueue's
    assert raw_controls(text) == []
    assert all(re.match(HEADER % os.getpid(), line) for line in text.splitlines()), text
    out = lines(logfile)
    # and an argument shows escaped, printable text as it is, on its own line
    shown = "m\\x1b[2J\\x1b]0;pwned\\x07\\rforged INFO: ok\\n2026-01-01 fake line\\u202e\\x00"
    assert out[0].endswith(f"WARNING: task {shown} from queue {shown}: headers "
                           f"{{'x-taskqueue-reason': '{shown}'}}"), out[0]
    assert " task=m\\x1b[2J\\x1b]0;pwned\\x07\\rforged\\x20INFO:" in out[1]
    assert out[2].endswith("ERROR: refused: " + HOSTILE.replace("\x1b", "\\x1b").replace(
        "\x07", "\\x07").replace("\r", "\\r").replace("\n", "\\n").replace(
        "\u202e", "\\u202e").replace("\x00", "\\x00"))


def test_printable_unicode_in_a_line_stays_readable(logfile):
    logging.getLogger("x").info("tâche %s reçue", "日本語 ✓")
    assert lines(logfile)[-1].endswith("INFO: tâche 日本語 ✓ reçue")


def test_an_argument_marked_as_lines_keeps_its_line_breaks_and_loses_its_controls(logfile):
    # A traceback quoting a forged id: its lines stay lines of the event, nothing else goes raw
    logging.getLogger("x").error("task raised:\n%s",
                                 logs.Lines(f"Traceback\nValueError: {HOSTILE}"))
    out = lines(logfile)
    assert raw_controls(open(logfile).read()) == []
    assert out[0].endswith("ERROR: task raised:") and out[1].endswith("ERROR: | Traceback")
    assert out[2].endswith("ERROR: | ValueError: m\\x1b[2J\\x1b]0;pwned\\x07\\rforged INFO: ok")
    assert out[3].endswith("ERROR: | 2026-01-01 fake line\\u202e\\x00")
