"""The report lines a child writes to its supervisor, read back one child at a time.

Every child gets a pipe of its own, made just before its fork: the supervisor
knows whose pipe it reads, so a line speaks for the child that wrote it and
for no other (a plugin's code runs in the child and can write anything on
its pipe; what it writes concerns only its own slot). A line is
`<event> [<detail>]`. The reader keeps at most LINE_MAX bytes of an
incomplete line: a longer one is dropped, and reading resumes after its
newline, so no child can grow the supervisor's memory. Details are made
printable here, before they reach a log line or `taskqueue status`.
"""
import os
import select

# A child chooses its details, and must not forge log lines or move the cursor: they
# are shown as every outside text is (printable.py, the one escaping function).
from taskqueue.printable import printable  # noqa: F401 (part of this module's interface)

#: What a child may report (child.ChildContext).
EVENTS = ("ready", "busy", "done", "broker", "unreachable", "lost")
#: Longest line kept, newline excluded: a child writes each line in one write of at
#: most PIPE_BUF bytes, so that it never arrives in pieces read apart.
LINE_MAX = select.PIPE_BUF
#: Bytes taken from a pipe per read.
READ_SIZE = 65536


def parse(line):
    """(event, detail) of one line (bytes, no newline), or None when it is not a report."""
    event, _, detail = line.decode("utf-8", "replace").partition(" ")
    if event not in EVENTS:
        return None
    return event, printable(detail)


class ReportReader:
    """The supervisor's end of one child's report pipe (non-blocking)."""

    def __init__(self, fd):
        self.fd = fd
        os.set_blocking(fd, False)
        self._partial = b""     # the start of a line, at most LINE_MAX bytes
        self._skipping = False  # inside a line longer than LINE_MAX: drop up to its newline
        self.dropped = 0        # lines too long or not reports, dropped
        self.eof = False        # every writer closed its end

    def read(self):
        """The reports (event, detail) that complete lines now in the pipe hold, in
        order; never blocks. Sets `eof` when the pipe has no writer left."""
        reports = []
        while not self.eof:
            try:
                data = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                break
            if not data:
                self.eof = True
                break
            self._take(data, reports)
        return reports

    def _take(self, data, reports):
        segments = data.split(b"\n")
        if self._skipping:
            if len(segments) == 1:
                return                  # still inside the overlong line
            self._skipping = False
            segments = segments[1:]     # the end of the overlong line is dropped
        else:
            # The kept partial is at most LINE_MAX bytes: each read copies little.
            segments[0] = self._partial + segments[0]
        *lines, tail = segments
        for line in lines:
            report = parse(line) if len(line) <= LINE_MAX else None
            if report is None:
                self.dropped += 1
            else:
                reports.append(report)
        if len(tail) > LINE_MAX:
            self._partial, self._skipping = b"", True
            self.dropped += 1
        else:
            self._partial = tail

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
