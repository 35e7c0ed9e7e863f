"""The tools: submit, check-config, status and the dead-letter commands; each
cmd_<name>(args) returns an exit code (startup.EXIT_*)."""
import datetime
import json
import os
import shlex
import sys
import time

from taskqueue.broker import blocking, fielddecode, inbound, pikaparams
from taskqueue.cli.startup import (EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_NO_BROKER, EXIT_OK,
                                   EXIT_TASK_FAILED, load_config, read_config)
from taskqueue.client import Client, onehop_message, trace_headers
from taskqueue.errors import ConfigError, InputError, TaskFailed
from taskqueue.host import config
from taskqueue.printable import printable
from taskqueue.protocol import (events, firings, replies, schedules, topology, tracecontext,
                                workitems)
from taskqueue.runtime import plugins


SUBMIT_EXIT_CODES = """\
WORKITEM is read as the dispatcher reads it: JSON, without NaN, Infinity or
numbers too large for a double. When no process consumes taskqueue or
worker_TYPE, a warning on stderr says where the tasks wait (exit status 0
still: they are served as soon as a pool with plugin TYPE runs).

exit status:
  0  submitted: every task confirmed by the broker (with --wait: the reply printed;
     with --delay: it waits in the delay queues, see taskqueue(1))
  1  the broker refused a task or the connection broke (with --wait: no reply in
     time). With --file some tasks may be submitted: the summary on stderr says how
     many and the line to resume from
  2  bad input (TYPE, WORKITEM, --delay, --priority, --expires, a line of the file, the
     config): nothing submitted
  4  no broker could be reached (refused, TLS, login; as `taskqueue status`): nothing
     submitted; the message names each broker tried and why
  5  with --wait: the task failed without a reply (it raised and was dead-lettered,
     was rejected, ran out of retries, was refused by the worker, expired, was
     cancelled); stderr says why
  130  --file stopped by Ctrl-C: as 1 (a second Ctrl-C ends it at once)
"""


def cmd_submit(args):
    from taskqueue.protocol.routing import TYPE_PATTERN, TYPE_RULE
    if not TYPE_PATTERN.match(args.worker_type):
        raise ConfigError(f"TYPE {args.worker_type[:100]!r} is not {TYPE_RULE}")
    if args.file is not None:
        return _submit_file(args)
    if args.delay is not None:
        return _submit_delayed(args)
    steering = _steering(args)
    cfg, _ = load_config(args, check_users=False)
    workitem = _workitem(args.worker_type, args.workitem)
    trace = trace_context(args)
    with Client.for_settings(cfg.amqp, "taskqueue submit") as client:
        if not args.wait:
            print(client.submit(args.worker_type, workitem, **steering, **trace), flush=True)
            warn_unless_served(cfg.amqp, args.worker_type, 1)
            return EXIT_OK
        try:
            reply = client.call(args.worker_type, workitem, args.timeout, **steering, **trace)
        except TimeoutError as exc:
            print(f"taskqueue: {printable(exc)}", file=sys.stderr)
            warn_unless_served(cfg.amqp, args.worker_type, 1)     # perhaps the reason
            return EXIT_FAILURE
        except TaskFailed as exc:
            print(f"taskqueue: {printable(exc)}", file=sys.stderr)
            return EXIT_TASK_FAILED
    print_reply(reply, sys.stdout)
    return EXIT_OK


def print_reply(reply, out):
    """The reply's body as it came to a pipe or a file (the program's data); escaped to a
    terminal (a worker's reply is any bytes: an ESC there would act on the terminal)."""
    reply += b"" if reply.endswith(b"\n") else b"\n"
    if out.isatty():
        out.write(printable(reply.decode("utf-8", "backslashreplace"), newlines=True))
        out.flush()
    else:
        out.flush()
        out.buffer.write(reply)


def _submit_delayed(args):
    """One task through the delay chain (delays.py), by the Client as any task."""
    from taskqueue.protocol import delays
    if args.wait:
        raise InputError("--delay and --wait together: a delayed task is not waited for")
    try:
        seconds = delays.whole_seconds(args.delay)
    except ValueError as exc:
        raise InputError(f"--delay: {exc}") from None
    steering = _steering(args, delay=seconds)
    cfg, _ = load_config(args, check_users=False)
    workitem = _workitem(args.worker_type, args.workitem)
    trace = trace_context(args)
    with Client.for_settings(cfg.amqp, "taskqueue submit") as client:
        print(client.submit(args.worker_type, workitem, delay=seconds, **steering, **trace),
              flush=True)
    warn_unless_served(cfg.amqp, args.worker_type, 1)
    return EXIT_OK


def _steering(args, delay=None):
    """--priority and --expires as Client keywords; InputError for an --expires that is
    not a number of seconds above 0, or not after --delay."""
    from taskqueue.protocol import expiry
    if args.expires is not None:
        try:
            expiry.checked_seconds(args.expires, delay)
        except ValueError as exc:
            raise InputError(f"--expires: {exc}") from None
    return {"priority": args.priority, "expires": args.expires}


def trace_context(args, environ=os.environ):
    """The trace context the tasks carry, as Client keywords: --traceparent and
    --tracestate (InputError when not valid); else the environment's TRACEPARENT and
    TRACESTATE (OpenTelemetry's way to hand a trace to a process), ignored with a
    warning when not valid: the command is not to fail for its caller's telemetry."""
    if args.traceparent is not None or args.tracestate is not None:
        try:
            tracecontext.checked(args.traceparent, args.tracestate)
        except ValueError as exc:
            raise InputError(f"--traceparent/--tracestate: {exc}") from None
        return {"traceparent": args.traceparent, "tracestate": args.tracestate}
    parent, state = environ.get("TRACEPARENT"), environ.get("TRACESTATE")
    if parent is None:
        return {}
    try:
        tracecontext.checked(parent, state)
    except ValueError as exc:
        print(f"taskqueue: warning: TRACEPARENT/TRACESTATE of the environment ignored: "
              f"{printable(exc)}", file=sys.stderr)
        return {}
    return {"traceparent": parent, "tracestate": state}


def _workitem(worker_type, argument):
    """The workitem of the WORKITEM argument (None: null; `-`: stdin), read as the
    dispatcher reads it; InputError naming the argument and the value."""
    where, text = "WORKITEM", "null" if argument is None else argument
    if text == "-":
        where, text = "WORKITEM (stdin)", sys.stdin.read()
    try:
        workitem = workitems.parse(text)
        onehop_message(worker_type, workitem)   # what cannot go out as the task sent (too deep)
        return workitem
    except ValueError as exc:
        shown = text if len(text) <= 100 else text[:100] + "..."
        problem = f"{where} {shown!r}: {exc}"
        if _starts_with_no_json_value(text):
            problem += f"; to send it as a JSON string, quote it: {json.dumps(text)!r}"
        raise InputError(problem) from None


def _starts_with_no_json_value(text):
    """True for text that is no JSON from its first character (`some work`), not
    for JSON that goes wrong later (`{oops`) nor for Python's extras (`NaN`)."""
    try:
        workitems.DECODER.raw_decode(text.lstrip(" \t\r\n"))
    except json.JSONDecodeError as exc:
        return exc.pos == 0
    except (ValueError, RecursionError):
        pass
    return False


def _submit_file(args):
    from taskqueue.cli import bulk
    if args.workitem is not None or args.wait:
        raise InputError("--file takes the workitems from the file: give no WORKITEM and no --wait")
    if args.delay is not None:
        raise InputError("--file and --delay together: not supported; submit delayed tasks one by one")
    steering = _steering(args)
    cfg, _ = load_config(args, check_users=False)
    tasks = bulk.read_tasks(args.file, args.worker_type)
    outcome = bulk.submit(cfg.amqp, args.worker_type, tasks, trace=trace_headers(
        **trace_context(args)), **steering)
    if outcome.error:
        print(f"taskqueue: {printable(outcome.error)}", file=sys.stderr)
    for line in bulk.summary(outcome, args.worker_type, args.file):
        print(printable(line), file=sys.stderr)
    if outcome.interrupted:
        return EXIT_INTERRUPTED
    if outcome.unreachable:
        return EXIT_NO_BROKER
    if outcome.confirmed:
        warn_unless_served(cfg.amqp, args.worker_type, outcome.confirmed)
    return EXIT_FAILURE if outcome.error else EXIT_OK


#: Seconds the check after a submit, whether anything consumes the tasks, may take.
SERVED_CHECK_TIMEOUT = 5.0


def warn_unless_served(settings, worker_type, tasks):
    """Say on stderr when no process consumes `taskqueue` or worker_<type>. The tasks
    wait, which is by design (a plugin works as soon as it is installed), but it should
    not be a surprise. Advisory: the tasks are submitted whatever happens here, so a
    broker problem is a warning too, never a failure of the command."""
    queues = [topology.TASK_QUEUE, topology.worker_queue(worker_type)]
    try:
        counts = blocking.queue_counts(settings, queues, SERVED_CHECK_TIMEOUT)
    except Exception as exc:    # whatever it is, the tasks are submitted
        print(f"taskqueue: warning: could not check whether a process consumes {queues[1]}: "
              f"{printable(exc)}", file=sys.stderr)
        return
    warning = unserved_warning(worker_type, tasks, counts)
    if warning:
        print(f"taskqueue: warning: {printable(warning)}", file=sys.stderr)


def unserved_warning(worker_type, tasks, counts):
    """The warning for `tasks` tasks just submitted for `worker_type`, given the
    blocking.queue_counts of taskqueue and worker_<type>; None when they are consumed.

    Submitted one hop (onehop.py), tasks go straight into worker_<type> when it
    exists (whoever declared it bound it), so no dispatcher is needed for them;
    without it they go to taskqueue, where only a dispatcher moves them on. A
    taskqueue holding tasks with no dispatcher is worth a warning either way
    (a worker queue an older taskqueue made is not bound until a new one starts)."""
    queue = topology.worker_queue(worker_type)
    task_queue = counts.get(topology.TASK_QUEUE)
    dispatched = bool(task_queue and task_queue[1])
    served = bool(counts.get(queue) and counts[queue][1])
    subject = "the task waits" if tasks == 1 else f"the {tasks} tasks wait"
    pool = f"until a pool with plugin {worker_type} runs"
    if not dispatched and (counts.get(queue) is None or (task_queue and task_queue[0])):
        return (f"no process consumes {topology.TASK_QUEUE} (no dispatcher runs): {subject} there "
                f"until one does" + ("" if served else f", then in {queue} {pool}"))
    if not served:
        return f"no process consumes {queue}: {subject} there {pool}"
    return None


def _describe_tls(settings):
    """The check-config line for TLS: the files were read (and matched) when the config loaded."""
    if not settings.tls:
        return "off (plaintext)"
    parts = [f"tls_ca_file {settings.tls_ca_file}" if settings.tls_ca_file else "the system's CAs"]
    if settings.tls_server_name:
        parts.append(f"tls_server_name {settings.tls_server_name}")
    if settings.tls_cert_file:
        parts.append(f"client certificate {settings.tls_cert_file} (key {settings.tls_key_file}: "
                     "matches)")
    parts.append(f"auth {settings.auth}")
    return "verified against " + ", ".join(parts)


def cmd_check_config(args):
    path = config.resolve_path(args.config)
    found = plugins.discover()
    cfg = read_config(path, found)
    problem = config.unsafe_files(cfg, as_root=os.geteuid() == 0)
    if problem:   # the daemons would refuse it
        raise ConfigError(problem)
    logging_line = _describe_logging(cfg)
    print(f"config: {path}: ok")
    for warning in cfg.warnings:
        print(f"warning: {warning}")
    print(f"broker: {pikaparams.describe(cfg.amqp)} "
          f"(connect timeout {cfg.amqp.connect_timeout:g}s)")
    print(f"tls: {_describe_tls(cfg.amqp)}")
    print(f"messages: {describe_limits(cfg.amqp)}")
    amqp = cfg.amqp
    print("task events: " + (f"on, to {events.STREAM} (retention "
                             f"{config.format_span(amqp.events_retention)}, at most "
                             f"{amqp.events_max_bytes // 2**20} MiB)"
                             if amqp.events else "off ([amqp] events)"))
    print(f"logging: {logging_line}")
    print("plugins found:" if found else "plugins found: none")
    for name, ep in sorted(found.items()):
        dist = f" ({ep.dist.name} {ep.dist.version})" if getattr(ep, "dist", None) else ""
        print(f"  {name}: {ep.value}{dist}")
    commands = {g.worker_type: g.command for g in cfg.groups if g.command}
    for name, argv in sorted(commands.items()):   # shlex.join: as the config may write it
        print(f"command: {name}: {shlex.join(argv)} (one process per task)")
    rows = [("dispatcher", "-", str(cfg.dispatcher.processes), "-", topology.TASK_QUEUE, "-")]
    rows += [(g.worker_type, g.subgroup or "-", str(g.processes), g.user or "-", g.queue,
              _describe_retries(g.retry), replies.describe(g.reply_queues),
              _describe_rate_limits(g)) for g in cfg.groups]
    rows[0] += ("-", "-")
    if cfg.schedules:   # the pool's scheduler child (runtime/scheduler.py): run, workerpool
        rows.append(("scheduler", "-", "1", "-", "-", "-", "-", "-"))
    print("processes:")
    _print_table(("type", "subgroup", "count", "user", "queue", "retries", "replies to",
                  "rate limit"), rows)
    if cfg.schedules:
        print("schedules:")
        _print_table(("name", "when", "type", "source", "settings", "next (local)", "next (UTC)"),
                     schedule_rows(cfg.schedules, found, time.time()))
    return EXIT_OK


def schedule_rows(chosen, found, now):
    """check-config's row of each schedule: its next firing after `now` in the
    schedule's zone and in UTC; a type no plugin here provides is marked (its tasks
    wait for a pool that has it)."""
    rows = []
    for one in chosen:
        at = schedules.next_slot(one, now)
        local = datetime.datetime.fromtimestamp(at, schedules.zone_of(one))
        when = one.when if one.every is not None else f"{one.when} ({one.timezone})"
        kind = one.worker_type if one.worker_type in found else f"{one.worker_type} (not here)"
        rows.append(tuple(printable(cell) for cell in (
            one.name, when, kind, one.source, _describe_settings(one),
            local.strftime("%Y-%m-%d %H:%M:%S %Z"), firings.slot_id(at))))
    return rows


def _describe_settings(schedule):
    """`missed skip, expires 1h, priority 5`, or `-` when all are the defaults."""
    parts = [f"missed {schedule.missed}"] if schedule.missed != "latest" else []
    if schedule.expires is not None:
        parts.append(f"expires {config.format_span(schedule.expires)}")
    if schedule.priority is not None:
        parts.append(f"priority {schedule.priority}")
    return ", ".join(parts) or "-"


def describe_limits(settings):
    """The check-config line for what a message may be (inbound.py, fielddecode.py)."""
    return (f"bodies up to {_size_text(settings.max_body_size)} (max_body_size); headers up to "
            f"{fielddecode.MAX_DEPTH} levels deep, {fielddecode.MAX_FIELDS} fields, "
            f"{fielddecode.MAX_TABLE_BYTES} bytes; priority at most {inbound.MAX_PRIORITY}")


def _size_text(size):
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"


def _describe_rate_limits(group):
    """`5/s`, `2/m per host`, both, or `-` (protocol/ratelimits.py)."""
    limits = ([str(group.rate_limit)] if group.rate_limit else []) + \
        ([f"{group.rate_limit_per_host} per host"] if group.rate_limit_per_host else [])
    return ", ".join(limits) or "-"


def _describe_retries(policy):
    """`3 (1s x2, at most 3600s)`, or `-` for a group that does not retry what raises."""
    if not policy.max_retries:
        return "-"
    return (f"{policy.max_retries} ({policy.delay:g}s x{policy.backoff:g}, "
            f"at most {policy.max_delay:g}s)")


def _describe_logging(cfg):
    """`info to file /path`; refuses a file whose directory does not exist (the daemons
    would). Whether they can open it depends on the user they start as: not checked."""
    settings = cfg.logging
    if settings.target != "file":
        return f"{settings.level} to {settings.target}"
    directory = os.path.dirname(settings.path)
    if not os.path.isdir(directory):
        raise ConfigError(f"{cfg.path}: [logging] path = {settings.path!r}: expected a file in "
                          f"an existing directory ({directory} is none)")
    return f"{settings.level} to file {settings.path}"


STATUS_EXIT_CODES = """\
The queues: taskqueue, the worker queues of the config and of the running
groups, taskqueue_dead, and every other worker_<type> queue of the broker
that holds tasks or has a consumer: those are listed with rabbitmqctl, which
works as root on the broker's host (elsewhere the table says why not).

exit status (the highest that applies):
  0  healthy
  1  a group is quarantined, or a queue that needs a consumer has none, or
     another worker queue holds tasks and has no consumer
  2  bad arguments or config: nothing asked
  3  no supervisor answers on this host
  4  the broker could not be asked
"""


def cmd_status(args):
    """Exit codes: status.HEALTHY, UNHEALTHY, NO_SUPERVISOR, NO_BROKER (the highest that holds)."""
    from taskqueue.cli import status
    if not args.timeout > 0:
        raise ConfigError(f"--timeout {args.timeout:g}: expected a number of seconds > 0")
    # Users are not looked up: status shows what runs, whatever the password database says.
    cfg = config.load(config.resolve_path(args.config), plugins.discover(), check_users=False)
    view = status.gather(cfg, args.timeout)
    if args.json:
        print(json.dumps(view, indent=2))
    else:
        print(status.render(view), end="")
    for error in view["errors"]:   # the picture is incomplete: say so where errors go
        print(f"taskqueue: {printable(error)}", file=sys.stderr)
    return view["exit_code"]


# -- the dead letters ------------------------------------------------------------

DEAD_LIMIT_NOTE = """\
list and requeue read every dead letter and hand back what they keep (a
consumer that does not ack, then basic.nack). RabbitMQ 3 puts no limit on
that (taskqueue_dead has no delivery limit) and 4.3+ does not count a nack;
but RabbitMQ 4.0 to 4.2 count each hand-back as a delivery of a quorum queue
and drop the message after 20 by default. There, raise the limit for taskqueue_dead with a policy, e.g.
  rabbitmqctl set_policy --apply-to quorum_queues taskqueue-dead \\
      '^taskqueue_dead$' '{"delivery-limit": 1000000}'
"""

DEAD_EXIT_CODES = """\
exit status: 0 done (purge: also when the answer to its question was no);
1 the connection broke, or (requeue) some dead letters were not requeued and
stay in taskqueue_dead; 2 bad arguments, nothing done; 4 no broker could be
reached (refused, TLS, login), nothing done.
"""


def cmd_dead_list(args):
    import shutil
    import time
    from taskqueue.cli import dead
    cfg, _ = load_config(args, check_users=False)
    letters, count = dead.list_dead(cfg.amqp, args.type, args.limit, bodies=args.json)
    now = time.time()
    if args.json:
        print(json.dumps([dead.as_json(letter, now) for letter in letters], indent=1))
    else:
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
        print("\n".join(dead.listing(letters, count, now, args.type, width)))
    return EXIT_OK


def cmd_dead_requeue(args):
    from taskqueue.cli import dead
    if args.all and (args.ids or args.type):
        raise InputError("dead requeue: --all takes every dead letter; give it alone, "
                         "or select with --id/--type")
    if not (args.all or args.ids or args.type):
        raise InputError("dead requeue: say which dead letters to requeue: --id ID (repeatable), "
                         "--type TYPE, or --all")
    cfg, _ = load_config(args, check_users=False)
    report = dead.requeue_dead(cfg.amqp, args.ids or (), args.type)
    print("\n".join(report.done()))
    for problem in report.problems():
        print(f"taskqueue: {problem}", file=sys.stderr)
    return EXIT_FAILURE if report.problems() else EXIT_OK


def cmd_dead_purge(args):
    from taskqueue.cli import dead
    if not args.yes and not sys.stdin.isatty():
        raise InputError("dead purge: not on a terminal, so nobody can confirm: "
                         "add --yes to purge taskqueue_dead")
    cfg, _ = load_config(args, check_users=False)
    if not args.yes:
        count = dead.count_dead(cfg.amqp)
        if count == 0:
            print(f"{topology.DEAD_QUEUE} is empty: nothing to purge")
            return EXIT_OK
        print(f"Purge {dead.count_text(count)} from {topology.DEAD_QUEUE}? [y/N] ",
              end="", file=sys.stderr, flush=True)
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            print("nothing purged")
            return EXIT_OK      # the operator's choice, done as asked: no failure
    purged = dead.purge_dead(cfg.amqp)
    print(f"purged {dead.count_text(purged)} from {topology.DEAD_QUEUE}")
    return EXIT_OK


def _print_table(header, rows):
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
