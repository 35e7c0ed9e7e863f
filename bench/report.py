"""The figures' units, the same-repetition ratios, the targets, and the table."""
from stats import summary

UNITS = {"route": "msgs/s", "e2e": "tasks/s", "latency": "ms", "restart": "ms",
         "idle": "MB", "ratio": "x", "cpu/task": "us", "submit": "tasks/s",
         "body": "MB/s", "cluster": "tasks/s", "backlog": "tasks/s"}

#: (ratio name, numerator, denominator): computed within one repetition.
#: "taskqueue" alone is the dispatcher path (two hops); "one-hop" the broker-routed path.
RATIOS = [
    ("ratio dispatcher x1 / shovel", "route dispatcher x1", "route shovel"),
    ("ratio dispatcher x2 / shovel", "route dispatcher x2", "route shovel"),
    # Issue 15's targets, like for like: same queue type on both sides.
    ("ratio e2e one-hop classic / dramatiq t1", "e2e taskqueue one-hop classic", "e2e dramatiq t1"),
    ("ratio e2e one-hop / celery quorum", "e2e taskqueue one-hop", "e2e celery quorum"),
    ("ratio e2e taskqueue / celery quorum", "e2e taskqueue", "e2e celery quorum"),
    ("ratio e2e taskqueue classic / celery", "e2e taskqueue classic", "e2e celery"),
    ("ratio e2e taskqueue classic / dramatiq t1", "e2e taskqueue classic", "e2e dramatiq t1"),
    ("ratio latency p50 one-hop classic / dramatiq", "latency taskqueue one-hop classic p50",
     "latency dramatiq p50"),
    ("ratio cpu/task worker one-hop classic / dramatiq t1",
     "cpu/task taskqueue one-hop classic: workers", "cpu/task dramatiq t1: workers"),
    # For reading only.
    ("ratio e2e one-hop / dramatiq t1", "e2e taskqueue one-hop", "e2e dramatiq t1"),
    ("ratio e2e one-hop classic / celery", "e2e taskqueue one-hop classic", "e2e celery"),
    ("ratio e2e one-hop / taskqueue", "e2e taskqueue one-hop", "e2e taskqueue"),
    ("ratio e2e taskqueue / dramatiq t1", "e2e taskqueue", "e2e dramatiq t1"),
    ("ratio e2e taskqueue / dramatiq t8", "e2e taskqueue", "e2e dramatiq t8"),
    ("ratio latency p50 one-hop / dramatiq", "latency taskqueue one-hop p50",
     "latency dramatiq p50"),
    ("ratio latency p50 one-hop / celery quorum", "latency taskqueue one-hop p50",
     "latency celery quorum p50"),
    ("ratio cpu/task worker classic / dramatiq t1", "cpu/task taskqueue classic: workers",
     "cpu/task dramatiq t1: workers"),
    ("ratio latency p50 taskqueue / bare pika", "latency taskqueue p50", "latency bare pika p50"),
    ("ratio submit_many / submit --file", "submit client submit_many", "submit cli --file"),
    ("ratio submit loop / submit_many", "submit client loop", "submit client submit_many"),
    # Issue 26: against the broker's own limit (m_bare.py), the same confirmed publisher
    # feeding both sides: one hop (target) and the dispatcher path (for reading).
    ("ratio e2e one-hop / bare", "e2e taskqueue one-hop confirmed", "e2e bare"),
    ("ratio e2e one-hop classic / bare classic", "e2e taskqueue one-hop confirmed classic",
     "e2e bare classic"),
    ("ratio e2e taskqueue / bare", "e2e taskqueue confirmed", "e2e bare"),
    ("ratio e2e taskqueue classic / bare classic", "e2e taskqueue confirmed classic",
     "e2e bare classic"),
    # The e2e rows (published without confirms, as the peers publish) against the same
    # limit: for reading only (`--only e2e,bare`), not the same durability.
    ("ratio e2e one-hop unconfirmed / bare", "e2e taskqueue one-hop", "e2e bare"),
    ("ratio e2e one-hop classic unconfirmed / bare classic", "e2e taskqueue one-hop classic",
     "e2e bare classic"),
    ("ratio e2e taskqueue unconfirmed / bare", "e2e taskqueue", "e2e bare"),
    ("ratio e2e taskqueue classic unconfirmed / bare classic", "e2e taskqueue classic",
     "e2e bare classic"),
] + [  # Issue 26's body sizes (m_body.py): one hop against the bare broker, same size.
    (f"ratio body {queue_type} {kb} one-hop / bare", f"body one-hop {queue_type} {kb} MB/s",
     f"body bare {queue_type} {kb} MB/s")
    for queue_type in ("classic", "quorum") for kb in (1, 64, 1024, 8192)
] + [
    # Issue 26's cluster row: quorum queues replicated on 3 nodes against 1 (no target).
    ("ratio cluster one-hop 3 nodes / 1", "cluster one-hop 3 e2e", "cluster one-hop 1 e2e"),
    ("ratio cluster dispatcher 3 nodes / 1", "cluster dispatcher 3 e2e",
     "cluster dispatcher 1 e2e"),
]

#: figure: (target as shown, test of the median), in the order the target table shows them
#: (issue 15's, then what the first round met and must still meet).
TARGETS = {
    # Issue 26's (the bare-broker rows; the others are other helpers').
    "ratio e2e one-hop / bare": (">= 0.8", lambda v: v >= 0.8),
    "ratio e2e one-hop classic / bare classic": (">= 0.8", lambda v: v >= 0.8),
    "ratio body classic 1024 one-hop / bare": (">= 0.8", lambda v: v >= 0.8),
    "ratio body quorum 1024 one-hop / bare": (">= 0.8", lambda v: v >= 0.8),
    "ratio e2e one-hop classic / dramatiq t1": (">= 2.0", lambda v: v >= 2.0),
    "ratio e2e one-hop / celery quorum": (">= 3", lambda v: v >= 3),
    "ratio e2e taskqueue / celery quorum": (">= 2.5", lambda v: v >= 2.5),
    "ratio e2e taskqueue classic / celery": (">= 2.5", lambda v: v >= 2.5),
    "ratio e2e taskqueue classic / dramatiq t1": (">= 1.5", lambda v: v >= 1.5),
    "ratio latency p50 one-hop classic / dramatiq": ("<= 0.6", lambda v: v <= 0.6),
    "ratio cpu/task worker one-hop classic / dramatiq t1": ("<= 1", lambda v: v <= 1),
    "ratio dispatcher x1 / shovel": (">= 0.7", lambda v: v >= 0.7),
    "ratio latency p50 taskqueue / bare pika": ("<= 3", lambda v: v <= 3),
    "restart p50": ("<= 50", lambda v: v <= 50),
    "restart p99": ("<= 200", lambda v: v <= 200),
    "idle worker PSS": ("<= 15", lambda v: v <= 15),
    "idle supervisor CPU": ("< 0.5", lambda v: v < 0.5),
    # Issue 26: backlog (m_backlog.py) and submitters (m_submit.py).
    "ratio backlog classic drain 1000000 / 10000": (">= 0.9", lambda v: v >= 0.9),
    "ratio backlog quorum drain 1000000 / 10000": (">= 0.9", lambda v: v >= 0.9),
    "backlog classic 1000000 rss growth max": ("<= 5", lambda v: v <= 5),
    "backlog quorum 1000000 rss growth max": ("<= 5", lambda v: v <= 5),
    "ratio submit threads 16 / 1": (">= 4", lambda v: v >= 4),
    # Issue 26's types row (bench/m_types.py).
    "types 200 all consuming existing (s)": ("<= 5", lambda v: v <= 5),
    "types 200 supervisor idle cpu (%)": ("< 1", lambda v: v < 1),
    "types 200 status (s)": ("<= 1", lambda v: v <= 1),
}


def ratios(result):
    return {name: result[num] / result[den] for name, num, den in RATIOS
            if num in result and den in result and result[den]}


def summarize(figures):
    out = {}
    for key, values in figures.items():
        out[key] = summary(values)
        if key in TARGETS:
            target, test = TARGETS[key]
            out[key].update(target=target, met=test(out[key]["median"]))
    return out


def unit(key):
    if key.endswith(")") and " (" in key:   # the unit in the name: "types 200 status (s)"
        return key.rsplit(" (", 1)[1][:-1]
    if key.startswith("backlog") and (" rss " in key or key.endswith("memory")):
        return "MB"
    if key.startswith("backlog") and key.endswith("preload"):
        return "msgs/s"
    if key.endswith("CPU"):
        return "%"
    if key.endswith("backoffs"):
        return "count"
    return UNITS.get(key.split()[0], "")


def render(summary, args):
    """Every figure, then the targets alone (a target whose figure was not measured: `-`)."""
    return _table(summary, args) + "\n\n" + _targets(summary)


def _targets(summary):
    header = f"{'target':<52} {'median':>10} {'min-max':>21} {'target':>8}  met"
    lines = ["targets (issue 26, issue 15, then the first round's)", header, "-" * len(header)]
    for key, (target, _) in TARGETS.items():
        s = summary.get(key)
        if s is None:
            lines.append(f"{key:<52} {'-':>10} {'':>21} {target:>8}  not measured")
            continue
        spread = f"{_num(s['min'])}-{_num(s['max'])}"
        lines.append(f"{key:<52} {_num(s['median']):>10} {spread:>21} {target:>8}  "
                     f"{'yes' if s['met'] else 'NO'}")
    return "\n".join(lines)


def _table(summary, args):
    header = f"{'figure':<52} {'unit':>7} {'median':>10} {'min-max':>21} {'target':>8}  met"
    lines = [f"taskqueue bench: {args.repeat} repetition(s), medians and spread", header,
             "-" * len(header)]
    for key, s in summary.items():
        spread = f"{_num(s['min'])}-{_num(s['max'])}"
        met = "" if "met" not in s else ("yes" if s["met"] else "NO")
        lines.append(f"{key:<52} {unit(key):>7} {_num(s['median']):>10} {spread:>21} "
                     f"{s.get('target', ''):>8}  {met}")
    return "\n".join(lines)


def _num(value):
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"
