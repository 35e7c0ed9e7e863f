"""Where a workerpool's start goes, from its log (the types measurement's pool logs).

    python bench/types_timeline.py WORKDIR/workerpool-...-types200-existing.log

The supervisor logs, with 1 ms stamps, its first line (`supervisor started`),
each child's `STOPPED -> STARTING` (just before its fork: the supervisor forks
them one after the other, in one loop, before it handles any event) and its
`STARTING -> RUNNING (ready in Xs)` (when it READ the child's `ready` report:
late while it is still forking the others); the child logs `consuming <queue>`
right after writing that report (its basic_consume answered). From these:
the fork loop's length and pace, when 50/90/100 % of the children consumed,
how many were starting at once, and `ready in` by fork order (deciles), which
shows whether the late children are slow because they wait for the CPU the
early ones use. Exits and back-offs during the start are counted too.
"""
import datetime
import re
import statistics
import sys

LINE = re.compile(r"^(\S+ \S+) taskqueue\[\d+\] supervisor \w+: (.*)$", re.MULTILINE)
#: The child's own line, right after it wrote `ready` (its consume answered).
CONSUMING = re.compile(r"^(\S+ \S+) taskqueue\[\d+\] worker (\S+#\d+) INFO: consuming ",
                       re.MULTILINE)
FORK = re.compile(r"^(\S+#\d+) pid=- STOPPED -> STARTING")
READY = re.compile(r"^(\S+#\d+) pid=\d+ STARTING -> RUNNING \(ready in ([\d.]+)s\)")
TROUBLE = re.compile(r"-> BACKOFF|exited|killed by")


def epoch(stamp):
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def timeline(text):
    """{child: {"fork": t, "ready": t, "ready_in": s}}, t0 (supervisor started), troubles."""
    children, t0, troubles = {}, None, 0
    for stamp, message in LINE.findall(text):
        when = epoch(stamp)
        if t0 is None and message.startswith("supervisor started"):
            t0 = when
        fork, ready = FORK.match(message), READY.match(message)
        if fork:
            children.setdefault(fork.group(1), {})["fork"] = when
        elif ready:
            child = children.setdefault(ready.group(1), {})
            child["ready"], child["ready_in"] = when, float(ready.group(2))
        elif TROUBLE.search(message):
            troubles += 1
    for stamp, child in CONSUMING.findall(text):
        children.setdefault(child, {})["consuming"] = epoch(stamp)
    return children, t0, troubles


def summary(text):
    children, t0, troubles = timeline(text)
    done = sorted((c for c in children.values() if {"ready", "fork", "consuming"} <= set(c)),
                  key=lambda c: c["fork"])
    if not done or t0 is None:
        return "no child started in this log"
    forks = [c["fork"] - t0 for c in done]
    readies = sorted(c["ready"] - t0 for c in done)
    own = sorted(c["consuming"] - t0 for c in done)
    lag = sorted(c["ready"] - c["consuming"] for c in done)
    n = len(done)
    # Children between their fork and their ready, at each event: the most at once.
    events = sorted([(c["fork"], 1) for c in done] + [(c["consuming"], -1) for c in done])
    starting = most = 0
    for _, step in events:
        starting += step
        most = max(most, starting)
    lines = [f"{n} children (of {len(children)} forked); exits/back-offs during the start: "
             f"{troubles}",
             f"fork loop: {forks[0]:.3f}s to {forks[-1]:.3f}s after `supervisor started` "
             f"({(forks[-1] - forks[0]) / max(n - 1, 1) * 1000:.1f} ms a fork)",
             f"consuming (the children's own lines): first {own[0]:.3f}s, 50% {own[n // 2]:.3f}s, "
             f"90% {own[int(n * 0.9) - 1 if n >= 10 else -1]:.3f}s, "
             f"all {own[-1]:.3f}s after `supervisor started`",
             f"RUNNING (the supervisor read `ready`): first {readies[0]:.3f}s, all "
             f"{readies[-1]:.3f}s; its lag behind the child's line p50 "
             f"{statistics.median(lag) * 1000:.0f} ms, max {lag[-1] * 1000:.0f} ms",
             f"at most {most} children starting at once",
             f"fork to consuming (child's line): p50 "
             f"{statistics.median(c['consuming'] - c['fork'] for c in done):.3f}s, max "
             f"{max(c['consuming'] - c['fork'] for c in done):.3f}s",
             "by fork order (decile: forked at, fork to consuming p50):"]
    step = max(n // 10, 1)
    for k in range(0, n, step):
        part = done[k:k + step]
        lines.append(f"  children {k:>4}-{k + len(part) - 1:<4} forked at "
                     f"{part[0]['fork'] - t0:6.3f}s  fork to consuming p50 "
                     f"{statistics.median(c['consuming'] - c['fork'] for c in part):.3f}s")
    return "\n".join(lines)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        with open(path) as f:
            print(f"== {path}\n{summary(f.read())}")
