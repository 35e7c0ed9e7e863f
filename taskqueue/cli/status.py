"""`taskqueue status`: ask this host's supervisors and the broker, judge, and show it.

Read-only: it reads the status sockets (snapshot.py says what they answer),
declares queues passively and lists the others with rabbitmqctl where it can
(queuelist.py says why that way); it creates, starts and changes nothing.
`gather` does the asking; `assess` and `render` are pure.
"""
import glob
import json
import os
import socket
import stat
from collections import Counter

from taskqueue import redact
from taskqueue.broker import blocking, cancellog, pikaparams
from taskqueue.cli import queuelist
from taskqueue.cli.progress import format_duration
from taskqueue.cli.startup import EXIT_NO_BROKER
from taskqueue.errors import TaskqueueError, Unlisted
from taskqueue.printable import printable
from taskqueue.protocol import cancels, delays, priorities, topology
from taskqueue.protocol.ratelimits import Bucket
from taskqueue.supervision import snapshot

# Exit codes of `taskqueue status`; when several apply, the highest. (2, a bad config
# or bad arguments, is the command line's own.)
HEALTHY = 0
UNHEALTHY = 1        #: a group is quarantined, or a queue that needs a consumer (or holds tasks) has none
NO_SUPERVISOR = 3    #: no supervisor answered on this host: the picture lacks the processes
NO_BROKER = EXIT_NO_BROKER  #: the broker could not be asked: the picture lacks the queues
#: Longest answer read from a status socket.
MAX_ANSWER = 16 * 2**20
#: How the table words a child's or group's state (the JSON keeps the one-word form).
STATE_WORDS = {"backoff": "backing off"}
#: Longest message id shown in the table (the JSON has it whole).
TASK_WIDTH = 36
#: Durations shorter than this are shown in tenths of a second (a backoff, a slow reply).
TENTHS_BELOW = 10


def gather(cfg, timeout):
    """Everything `taskqueue status` shows, as a JSON-ready dict with `problems`,
    `errors` (what could not be asked) and `exit_code`."""
    # rabbitmqctl's second (an Erlang VM starting) is spent asking the rest meanwhile.
    listing = queuelist.Listing(cfg.amqp, timeout)
    try:
        return _gather(cfg, timeout, listing)
    finally:
        listing.abandon()


def _gather(cfg, timeout, listing):
    supervisors = [ask_supervisor(path, timeout) for path in status_sockets(cfg.supervisor.status_dir)]
    expected = queue_names(cfg, supervisors)
    highs = high_queues(expected)
    buckets = rate_buckets(cfg, socket.gethostname())
    bucket_queues = [q for b in buckets for q in (b.token_queue, b.wait_queue)]
    try:
        counts, broker_error = blocking.queue_counts(
            cfg.amqp, expected + highs + list(delays.LEVEL_QUEUES) + bucket_queues,
            timeout), None
    except TaskqueueError as exc:
        counts, broker_error = {}, str(exc)
    delay_counts = [counts.pop(queue, None) for queue in delays.LEVEL_QUEUES]
    rate_counts = {queue: counts.pop(queue, None) for queue in bucket_queues}
    # A high queue is shown once it exists (the workers of this version declare it); it
    # is a problem only when tasks wait in it with no consumer (an older pool's).
    found = {queue for queue in highs if counts.get(queue) is not None}
    others, listed = set(), {"source": None, "error": "the broker could not be asked"}
    if broker_error is None:
        others, listed = other_worker_queues(cfg.amqp, timeout, counts, listing)
    queues = [expected[0], *sorted(set(expected[1:-1]) | others | found), expected[-1]]
    view = {
        "status_dir": cfg.supervisor.status_dir,
        "supervisors": supervisors,
        "broker": {"address": pikaparams.describe(cfg.amqp),
                   "error": None if broker_error is None else redact.redact(broker_error)},
        "queue_listing": listed,
        "queues": queue_rows(queues, counts, supervisors, broker_error is None, expected),
        "delayed": delayed_tasks(delay_counts) if broker_error is None else None,
        "rate_limits": rate_rows(buckets, rate_counts, broker_error is None),
        "cancels": cancels_pending(cfg.amqp, timeout) if broker_error is None else None,
    }
    view.update(assess(view))
    return view


def other_worker_queues(settings, timeout, counts, listing=None):
    """(the worker queues of the broker beyond those in `counts` that hold tasks or
    have a consumer, {"source": "rabbitmqctl" or None, "error": why they could not be
    listed}); adds their counts to `counts`. `listing`: a queuelist.Listing started
    before `counts` was taken (default: one started now). A queue counted and not
    listed means another node answered, or that the queue came after the listing was
    taken: a listing started after the counts tells which."""
    try:
        listed = (listing or queuelist.Listing(settings, timeout)).names()
        if listing is not None and queuelist.contradiction(listed, counts):
            listed = queuelist.list_queues(settings, timeout)
        problem = queuelist.contradiction(listed, counts)
        if problem:
            raise Unlisted(problem)
        # Every queue named worker_..., a forged name too (not worker_type_of): status shows it.
        others = sorted(name for name in listed
                        if name.startswith(topology.WORKER_QUEUE_PREFIX) and name not in counts)
    except Unlisted as exc:
        return set(), {"source": None, "error": f"{exc} ({queuelist.WHERE_IT_WORKS})"}
    try:
        # Counted as the others are, exactly: rabbitmqctl's counts of quorum queues lag.
        counts.update(blocking.queue_counts(settings, others, timeout) if others else {})
    except TaskqueueError as exc:
        return set(), {"source": None, "error": f"the broker did not count them: {exc}"}
    return ({name for name in others if any(counts[name] or ())},
            {"source": queuelist.RABBITMQCTL, "error": None})


def high_queues(queues):
    """The high queues (priorities.py) of the worker queues among `queues`."""
    return [priorities.high_queue(worker_type) for worker_type in
            (topology.worker_type_of(queue) for queue in queues) if worker_type]


def delayed_tasks(counts):
    """How many tasks wait in the delay queues, from their queue_counts (None: the
    queue does not exist, no delayed task was ever submitted on this vhost)."""
    return sum(count[0] for count in counts if count)


def rate_buckets(cfg, host):
    """The rate-limit buckets of the config's groups (ratelimits.py), each once: every
    host's, and this host's."""
    found = []
    for group in cfg.groups:
        for bucket in ([Bucket(group.worker_type, group.rate_limit)] if group.rate_limit else []) \
                + ([Bucket(group.worker_type, group.rate_limit_per_host, host)]
                   if group.rate_limit_per_host else []):
            if bucket not in found:
                found.append(bucket)
    return found


def rate_rows(buckets, counts, asked):
    """One row per bucket: its limit, and from its queues' counts the tokens ready and
    the starts of the last period (the wait queue holds each spent token one period)."""
    rows = []
    for bucket in buckets:
        tokens, spent = counts.get(bucket.token_queue), counts.get(bucket.wait_queue)
        rows.append({"type": bucket.worker_type, "limit": str(bucket.limit),
                     "host": bucket.host, "tokens_ready": tokens[0] if tokens else None,
                     "started_last_period": spent[0] if spent else None,
                     "exists": (tokens is not None and spent is not None) if asked else None})
    return rows


def cancels_pending(settings, timeout):
    """{"pending": the cancels no worker has settled yet, "records": the records read,
    "junk": messages that were none, "error": why the stream could not be read}."""
    try:
        records, junk = cancellog.read_records(settings, timeout, name="taskqueue status")
    except TaskqueueError as exc:
        return {"pending": None, "records": None, "junk": None,
                "error": redact.redact(str(exc))}
    return {"pending": len(cancels.pending(records)), "records": len(records), "junk": junk,
            "error": None}


def status_sockets(status_dir):
    """The supervisors' sockets in `status_dir` (snapshot.socket_path names them)."""
    pattern = os.path.join(glob.escape(status_dir), snapshot.socket_path("", "*"))
    return sorted(path for path in glob.glob(pattern) if _is_socket(path))


def _is_socket(path):
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def ask_supervisor(path, timeout):
    """{"socket": path, "error": None, **its document}, or {"socket": path, "error": why}."""
    try:
        document = json.loads(_read_all(path, timeout))
    except ConnectionRefusedError:
        error = "not running: nothing listens on this socket (left by a supervisor that is gone)"
    except PermissionError:
        error = "permission denied: ask as root or as a member of group taskqueue"
    except socket.timeout:
        error = f"no answer within {timeout:g}s"
    except OSError as exc:
        error = exc.strerror or str(exc)
    except ValueError:
        error = "its answer is not a status document"
    else:
        if isinstance(document, dict) and document.get("format") == snapshot.FORMAT:
            return {"socket": path, "error": None, **document}
        error = "its answer is in another format (another taskqueue version?)"
    return {"socket": path, "error": error}


def _read_all(path, timeout):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(path)
        chunks, size = [], 0
        while size <= MAX_ANSWER:
            chunk = conn.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
    raise ValueError("answer too long")


def queue_names(cfg, supervisors):
    """The queues that need to be there: `taskqueue`, the worker queues of the config and
    of the running groups, `taskqueue_dead`."""
    workers = {group.queue for group in cfg.groups}
    workers |= {group["queue"] for group in _groups(supervisors) if group["kind"] == "worker"}
    return [topology.TASK_QUEUE, *sorted(workers), topology.DEAD_QUEUE]


def _groups(supervisors):
    return [group for answer in supervisors if not answer["error"] for group in answer["groups"]]


def queue_rows(queues, counts, supervisors, asked, expected=None):
    """One row per queue. `busy_here` counts this host's children handling one of its
    tasks: a lower bound of its unacked messages, which the broker tells only through
    its management API. `expected`: the queues that need a consumer or the dead-letter
    queue (queue_names; default: all), the others were found by listing the broker's."""
    answered = any(not answer["error"] for answer in supervisors)
    busy = Counter()
    for group in _groups(supervisors):
        if group["kind"] == "worker":
            busy[group["queue"]] += group["busy"]
    rows = []
    for queue in queues:
        count = counts.get(queue)
        rows.append({
            "name": queue,
            "exists": (count is not None) if asked else None,
            "ready": count[0] if count else None,
            "consumers": count[1] if count else None,
            # A child says which type it serves, not which of its queues its task came from.
            "busy_here": busy[queue] if answered and queue not in (
                topology.TASK_QUEUE, topology.DEAD_QUEUE) and not priorities.is_high_queue(queue)
            else None,
            "expected": expected is None or queue in expected,
        })
    return rows


def assess(view):
    """{"problems": [...], "errors": [...], "exit_code": n}: what needs the operator."""
    problems, errors, code = [], [], HEALTHY
    answered = [answer for answer in view["supervisors"] if not answer["error"]]
    problems += [f"{answer['socket']}: {answer['error']}"
                 for answer in view["supervisors"] if answer["error"]]
    for group in _groups(view["supervisors"]):
        if group["state"] == "quarantined":
            retries = [child["retry_in"] for child in group["children"] if child["retry_in"] is not None]
            when = f"in {format_duration(min(retries), TENTHS_BELOW)} " if retries else ""
            problems.append(f"{group['name']} is quarantined after {group['last_exit'] or '-'}; "
                            f"retried {when}or on reload (SIGHUP)")
            code = UNHEALTHY
    if view["broker"]["error"] is None:
        excused = _consumed_one_at_a_time(view["queues"])
        for queue in view["queues"]:
            # A queue nothing here expects is a problem only when tasks wait in it in vain.
            needed = queue["expected"] or queue["ready"]
            if queue["exists"] and priorities.worker_type_of(queue["name"]) in excused:
                continue
            if queue["name"] != topology.DEAD_QUEUE and not queue["consumers"] and needed:
                problems.append(f"queue {queue['name']} has no consumer ({queue['ready']} "
                                f"message(s) waiting){_high_hint(queue['name'])}"
                                if queue["exists"] else
                                f"queue {queue['name']} does not exist: nothing consumes it")
                code = UNHEALTHY
    if not answered:
        errors.append(f"no supervisor answers in {view['status_dir']}: is taskqueue running "
                      "on this host? (see [supervisor] status_dir)")
        code = NO_SUPERVISOR
    if view["broker"]["error"] is not None:
        errors.append(f"broker {view['broker']['address']}: {view['broker']['error']}")
        code = NO_BROKER
    return {"problems": problems + errors, "errors": errors, "exit_code": code}


def _consumed_one_at_a_time(queues):
    """The types whose queues have no consumer because their workers here are busy: a
    worker that takes one task at a time consumes neither of its queues while it runs
    one (runtime/intake.py). Not a type of which one queue has consumers and the other
    none: that one is unconsumed (the high queue of an older pool's type)."""
    busy = {priorities.worker_type_of(q["name"]) for q in queues if q["busy_here"]}
    consumed = {priorities.worker_type_of(q["name"]) for q in queues if q["consumers"]}
    return busy - consumed - {None}


def _high_hint(queue):
    """What an operator reads about a high queue without consumer (priorities.py)."""
    if not priorities.is_high_queue(queue):
        return ""
    return (f"; workers of an older taskqueue consume {queue[:-len(priorities.HIGH_SUFFIX)]} "
            "only: start a worker of this version until it is empty (docs: Priorities, in "
            "06-operating.md)")


# -- the table -------------------------------------------------------------------------

def render(view):
    """The view as text for a terminal. Queue names, task ids and failures come from
    others (publishers, the broker, children): each line, each cell, is escaped."""
    lines = []
    for answer in view["supervisors"]:
        lines += _supervisor_lines(answer) + [""]
    lines.append(f"queues on {view['broker']['address']}:")
    lines += _table(("QUEUE", "READY", "BUSY HERE", "CONSUMERS"),
                    [(q["name"], _cell(q["ready"]), _cell(q["busy_here"]), _cell(q["consumers"]))
                     for q in view["queues"]])
    if view["broker"]["error"] is None and view["queue_listing"]["error"]:
        lines.append(f"  (other worker queues not listed: {view['queue_listing']['error']})")
    if view.get("rate_limits"):
        lines.append("rate limits (the current rate: starts in the last period):")
        lines += _table(("TYPE", "LIMIT", "WHERE", "CURRENT", "TOKENS READY"),
                        [_rate_row(row) for row in view["rate_limits"]])
    if view.get("delayed") is not None:
        lines.append(f"delayed tasks waiting: {view['delayed']} (in {delays.QUEUE_PREFIX}*)")
    lines += _cancel_lines(view.get("cancels"))
    lines.append("")
    lines.append("problems:" if view["problems"] else "problems: none")
    lines += [f"  {problem}" for problem in view["problems"]]
    return "".join(printable(line) + "\n" for line in lines)


def _cancel_lines(found):
    if found is None:
        return []
    if found["error"]:
        return [f"cancels pending: unknown ({found['error']})"]
    junk = f", {found['junk']} message(s) that were no record" if found["junk"] else ""
    return [f"cancels pending: {found['pending']} (not yet settled by a worker; "
            f"{found['records']} record(s) in {cancels.STREAM}{junk})"]


def _supervisor_lines(answer):
    if answer["error"]:
        return [f"{answer['socket']}: {answer['error']}"]
    about = answer["supervisor"]
    up = format_duration(about["uptime"], TENTHS_BELOW)
    lines = [f"{about['name']}: pid {about['pid']}, up {up}"
             f"{', stopping' if about['stopping'] else ''} ({answer['socket']})"]
    lines += _table(("TYPE", "SUBGROUP", "USER", "WANTED", "RUNNING", "STATE", "RESTARTS",
                     "RETRIES", "EXPIRED", "LAST EXIT"),
                    [(g["type"], _cell(g["subgroup"]), _cell(g["user"]), str(g["processes"]),
                      str(g["running"]), STATE_WORDS.get(g["state"], g["state"]),
                      str(g["restarts"]), str(g.get("retries", 0)), str(g.get("expired", 0)),
                      _last_exit(g))
                     for g in answer["groups"]])
    lines.append("")
    lines += _table(("CHILD", "PID", "STATE", "TASK", "ELAPSED", "DONE", "BROKER"),
                    [_child_row(group, child) for group in answer["groups"]
                     for child in group["children"]])
    if answer.get("brokers"):
        lines.append("")
        lines.append("  brokers, as its children see them:")
        lines += _table(("BROKER", "CHILDREN", "SERVER", "LAST FAILURE"),
                        [_broker_row(row) for row in answer["brokers"]])
    return lines


def _rate_row(row):
    unit = row["limit"].rpartition("/")[2]
    now = "-" if row["started_last_period"] is None else f"{row['started_last_period']}/{unit}"
    if row["exists"] is False:
        now = "no bucket yet (no worker of the type started)"
    return (row["type"], row["limit"], "all hosts" if row["host"] is None else row["host"],
            now, _cell(row["tokens_ready"]))


def _broker_row(row):
    failure = "-"
    if row["failure"] is not None:
        failure = f"{format_duration(row['failed_ago'], TENTHS_BELOW)} ago: {row['failure']}"
    return (row["address"], str(row["children"]), row["server"] or "-", failure)


def _child_row(group, child):
    state, task, elapsed = STATE_WORDS.get(child["state"], child["state"]), "-", "-"
    if child["state"] == "running" and group["kind"] == "worker":
        state = "busy" if child["task"] is not None else "idle"
    if child["task"] is not None:
        task = _shorten(child["task"], TASK_WIDTH)
        elapsed = format_duration(child["task_seconds"], TENTHS_BELOW)
    elif child["retry_in"] is not None:
        task = f"retry in {format_duration(child['retry_in'], TENTHS_BELOW)}"
    done = str(child["tasks_done"]) if group["kind"] == "worker" else "-"
    return (child["name"], _cell(child["pid"]), state, task, elapsed, done,
            _cell(child.get("broker")))


def _last_exit(group):
    if not group["last_exit"]:
        return "-"
    return f"{group['last_exit']}, {format_duration(group['last_exit_ago'], TENTHS_BELOW)} ago"


def _table(header, rows):
    rows = [tuple(printable(cell) for cell in row) for row in rows]   # escaped, then aligned
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
            for row in [header, *rows]]


def _cell(value):
    return "-" if value is None else str(value)


def _shorten(text, width):
    return text if len(text) <= width else text[:width - 3] + "..."
