"""The ledger of a fault or cluster run: every task published is accounted for.

A task of a run ends completed (the marker plugin's `<pid>.done` lines) or
dead-lettered (a message in `taskqueue_dead`), and the ledger holds both for
the whole run: the dead-letter queue is drained with auto-ack, so each dead
letter taken is kept here, by task id, with its reason, whichever poll took it.
A run is judged once, after a deadline, never by a wait that returns only once
nothing is missing:

- lost: an id neither completed nor dead-lettered (named in the failure);
- dead letters: each must name a task of the run and have a reason the
  scenario allows (`DeadLetterRule`), no more of each kind than it allows;
- duplicates: every outcome beyond the first of a task (completed twice, or
  completed and dead-lettered, or dead-lettered twice), at most the bound the
  scenario promises: what the processes its faults ended could hold unsettled
  (`window_bound`).
"""
import collections
import os
import re
import time
import typing

#: Where dead letters go (taskqueue.protocol.topology.DEAD_QUEUE, named here so that the
#: cluster suite's hosts need nothing but this module).
DEAD_QUEUE = "taskqueue_dead"
#: The header in which taskqueue says why it dead-lettered a message.
REASON_HEADER = "x-taskqueue-reason"

#: Deliveries one process may hold unsettled, by kind: what a fault that ends it
#: can make run twice. A worker (prefetch 1) holds the task in hand and, with
#: lookahead, 3 more; a dispatcher its prefetch (each input it forwarded but had
#: not acked yet is routed again). The defaults of the option table in docs/05-configuration.md.
WORKER_WINDOW = 4
DISPATCHER_WINDOW = 256


def window_bound(workers=0, dispatchers=0):
    """Most extra outcomes that ending `workers` worker and `dispatchers` dispatcher
    connections can cause: their deliveries in flight, each at most once more."""
    return workers * WORKER_WINDOW + dispatchers * DISPATCHER_WINDOW


def completions(record_dir, kind=".done"):
    """How many times each task id was completed (the marker plugin's files); with
    kind=".onehop", those delivered one hop (routing key: the worker type)."""
    counts = collections.Counter()
    for name in os.listdir(record_dir):
        if name.endswith(kind):
            with open(os.path.join(record_dir, name)) as f:
                counts.update(line for line in f.read().split("\n") if line)
    return counts


class DeadLetter(typing.NamedTuple):
    task_id: typing.Optional[str]   # its message id
    reason: str                     # taskqueue's reason, else the broker's (`broker: ...`)
    headers: dict


def reason_of(headers):
    """Why a dead letter is dead: taskqueue's x-taskqueue-reason, else what the broker
    wrote when it dead-lettered it (x-death: rejected, expired, delivery_limit ...),
    else '' (nobody said: itself a problem)."""
    headers = headers or {}
    reason = headers.get(REASON_HEADER)
    if reason:
        return reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
    deaths = headers.get("x-death") or []
    if deaths and isinstance(deaths[0], dict):   # newest first
        death = deaths[0]
        return f"broker: {death.get('reason')} from {death.get('queue')}"
    return ""


class DeadLetterRule(typing.NamedTuple):
    """A kind of dead letter a scenario allows: its reason matches `pattern` (re.match),
    `check(dead letter)` returns None (or what is wrong with it), and at most `most`
    of them in the run."""
    name: str
    pattern: str
    most: int
    check: typing.Callable = lambda letter: None


#: taskqueue's reason for a task that killed delivery_limit processes (worker.py).
DELIVERY_LIMIT_REASON = r"delivery limit (\d+) reached: (\d+) processes died handling it; last: "


def delivery_limit_rule(limit, deaths_possible):
    """taskqueue's own poison-task dead letter: it killed `limit` processes. Each needs
    `limit` deaths while handling the one task, so a run whose faults can end at most
    `deaths_possible` processes in a task allows at most deaths_possible // limit."""
    def check(letter):
        found = re.match(DELIVERY_LIMIT_REASON, letter.reason)
        deaths = letter.headers.get("x-taskqueue-deaths")
        if int(found.group(1)) != limit:
            return f"names a delivery limit of {found.group(1)}, the run's is {limit}"
        if int(found.group(2)) < limit or deaths != int(found.group(2)):
            return (f"dead-lettered after {found.group(2)} deaths (header: {deaths}), "
                    f"before the limit of {limit}")
        return None
    return DeadLetterRule("delivery limit reached", DELIVERY_LIMIT_REASON,
                          deaths_possible // limit, check)


class Ledger:
    """Every outcome of the tasks `ids` over a whole run (see the module's docstring)."""

    def __init__(self, ids, record_dir):
        self.ids = list(ids)
        self.expected = set(self.ids)
        self.record_dir = record_dir
        #: task id -> [DeadLetter], every one taken from the queue in this run
        self.dead = collections.defaultdict(list)
        #: dead letters that name no task of this run (or none at all)
        self.strays = []

    # -- taking the outcomes ---------------------------------------------------

    def take_dead(self, client):
        """Drain taskqueue_dead (auto-ack) and keep every dead letter it held."""
        for props, _ in client.drain(DEAD_QUEUE):
            self.keep(props.message_id, props.headers)

    def keep(self, task_id, headers):
        letter = DeadLetter(task_id, reason_of(headers), dict(headers or {}))
        if task_id in self.expected:
            self.dead[task_id].append(letter)
        else:
            self.strays.append(letter)

    def completions(self):
        return completions(self.record_dir)

    def missing(self, done=None):
        """The ids neither completed nor dead-lettered (so far)."""
        done = self.completions() if done is None else done
        return self.expected - set(done) - set(self.dead)

    def settle(self, client, timeout, idle=None, interval=0.5):
        """Take outcomes until every task has one, and then until `idle()` says nothing
        is left in flight (duplicates still on their way land before the count), or
        until `timeout` s pass. Never fails: the run is judged afterwards (problems)."""
        deadline = time.monotonic() + timeout
        while True:
            self.take_dead(client)
            if not self.missing() and (idle is None or idle()):
                self.take_dead(client)   # what came in while idle() asked
                return self
            if time.monotonic() > deadline:
                return self
            time.sleep(interval)   # polling the broker and the record files: no event to wait on

    # -- judging -----------------------------------------------------------------

    def extra(self, done=None):
        """Outcomes beyond the first of each task: completions and dead letters alike."""
        done = self.completions() if done is None else done
        outcomes = collections.Counter(done)
        for task_id, letters in self.dead.items():
            outcomes[task_id] += len(letters)
        return sum(n - 1 for task_id, n in outcomes.items() if task_id in self.expected and n > 1)

    def problems(self, rules=(), most_extra=0, done=None):
        """What is wrong with the run, one line each ([] when every task is accounted for
        as the scenario allows)."""
        done = self.completions() if done is None else done
        problems = []
        missing = self.missing(done)
        if missing:
            problems.append(f"{len(missing)} tasks lost (neither completed nor dead-lettered): "
                            f"{sorted(missing)[:20]}")
        unknown = set(done) - self.expected
        if unknown:
            problems.append(f"{len(unknown)} completions of ids never published: "
                            f"{sorted(unknown)[:10]}")
        for letter in self.strays:
            problems.append(f"a dead letter of no task of this run: id {letter.task_id!r}, "
                            f"reason {letter.reason!r}")
        allowed = collections.Counter()
        for letters in self.dead.values():
            for letter in letters:
                rule = next((r for r in rules if re.match(r.pattern, letter.reason)), None)
                if rule is None:
                    problems.append(f"task {letter.task_id} dead-lettered for a reason the run "
                                    f"does not allow: {letter.reason!r}")
                    continue
                wrong = rule.check(letter)
                if wrong:
                    problems.append(f"task {letter.task_id} ({rule.name}): {wrong}: "
                                    f"{letter.reason!r}")
                allowed[rule] += 1
        for rule, count in allowed.items():
            if count > rule.most:
                problems.append(f"{count} dead letters '{rule.name}', the run allows at most "
                                f"{rule.most}")
        extra = self.extra(done)
        if extra > most_extra:
            problems.append(f"{extra} duplicate outcomes, more than the {most_extra} the run's "
                            f"faults can cause")
        return problems

    def figures(self, done=None):
        done = self.completions() if done is None else done
        letters = [letter for found in self.dead.values() for letter in found]
        return {
            "published": len(self.ids),
            "completed": len(set(done) & self.expected),
            "dead-lettered": len(self.dead),
            "dead-letter reasons": dict(collections.Counter(
                letter.reason.split(":")[0] for letter in letters + self.strays)),
            "lost": len(self.missing(done)),
            "duplicated (tasks completed more than once)": sum(1 for c in done.values() if c > 1),
            "duplicate outcomes": self.extra(done),
        }
