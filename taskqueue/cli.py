"""The `taskqueue` command: each subcommand is a cmd_<name>(args) returning an exit code."""
import argparse
import functools
import json
import logging
import os
import sys
import uuid

from . import __version__, amqp, config, logs, plugins
from .errors import ConfigError, InputError, PluginError, TaskqueueError

log = logging.getLogger("taskqueue")

EXIT_OK = 0
EXIT_FAILURE = 1      #: the command ran and failed (broker unreachable, children killed...)
EXIT_USAGE = 2        #: bad arguments or configuration; nothing was done
EXIT_INTERRUPTED = 130  #: stopped by Ctrl-C (SIGINT), as shells report it


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    logs.setup(logging.DEBUG if args.verbose else logging.INFO, getattr(args, "log", "stderr") or "auto")
    if not hasattr(args, "log") and not args.verbose:
        # A tool (not a daemon) says what went wrong with the broker in one sentence;
        # pika's log of each connection step, and its traceback, would bury it. -v shows them.
        logging.getLogger("pika").setLevel(logging.CRITICAL)
    try:
        return args.func(args)
    except (ConfigError, PluginError, InputError) as exc:
        print(f"taskqueue: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TaskqueueError as exc:
        print(f"taskqueue: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        # `taskqueue dead list | head`: the reader is gone, so is the rest of the output.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE


def _parser():
    parser = argparse.ArgumentParser(prog="taskqueue", description="A distributed task queue over AMQP.")
    parser.add_argument("--version", action="version", version=f"taskqueue {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, func, help_text, daemon=False, epilog=None, parent=sub):
        # An epilog is laid out by hand (exit codes, a command to copy): keep its lines.
        p = parent.add_parser(name, help=help_text, description=help_text, epilog=epilog,
                              formatter_class=argparse.RawDescriptionHelpFormatter if epilog
                              else argparse.HelpFormatter)
        p.add_argument("--config", metavar="PATH",
                       help=f"config file (default: $TASKQUEUE_CONFIG or {config.DEFAULT_PATH})")
        p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
        if daemon:
            p.add_argument("--pidfile", metavar="PATH", help="write the supervisor's pid here")
            p.add_argument("--user", metavar="NAME",
                           help="run as NAME wherever the config names no other user; the "
                                "supervisor itself drops to NAME unless a group needs root")
            p.add_argument("--log", choices=logs.TARGETS,
                           help="stderr; syslog; auto: syslog when /dev/log exists and stderr "
                                "is neither a terminal nor the journal, else stderr "
                                "(default: [logging] target, else auto)")
        p.set_defaults(func=func)
        return p

    command("run", cmd_run, "Run the dispatcher and the worker pool in the foreground.", daemon=True)
    command("dispatcher", cmd_dispatcher, "Run the dispatcher processes in the foreground.", daemon=True)
    command("workerpool", cmd_workerpool, "Run the worker pool in the foreground.", daemon=True)
    p = command("submit", cmd_submit, "Submit one task to the queue and print its message id; "
                "or, with --file, many.", epilog=SUBMIT_EXIT_CODES)
    p.add_argument("worker_type", metavar="TYPE", help="the worker type that handles the task")
    p.add_argument("workitem", metavar="WORKITEM", nargs="?",
                   help="the workitem as JSON (default: null; '-' reads it from stdin)")
    p.add_argument("--wait", action="store_true",
                   help="wait for the worker's reply (sent to reply_to) and print its body")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="with --wait: give up after SECONDS (default 30); exit status 1")
    p.add_argument("--file", metavar="PATH",
                   help="submit one task per line of PATH ('-': stdin), each line a workitem "
                        "as JSON; blank lines are skipped. The whole file is checked first: "
                        "one bad line and nothing is submitted")
    _dead_parser(sub, command)
    command("check-config", cmd_check_config,
            "Validate the config; show the plugins found and the processes it would start.")
    p = command("status", cmd_status,
                "Show this host's supervisors, their processes, and the queues on the broker.")
    p.add_argument("--json", action="store_true", help="print one JSON document, for scripts")
    p.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                   help="wait at most SECONDS for each supervisor and for the broker (default 5)")
    return parser


def load_config(args, switches_users=False, apply_logging=False, check_users=True):
    """The config and the installed plugins. Only a command that runs the worker
    groups (switches_users) needs to be able to become their users; the others
    just check that the users exist, or, for the tools (submit, dead), ignore them."""
    path = config.resolve_path(args.config)
    found = plugins.discover()
    cfg = config.load(path, found, check_users=check_users,
                      running_uid=os.getuid() if switches_users else None)
    if apply_logging:
        setup_logging(args, cfg)
    for warning in cfg.warnings:
        log.warning("%s", warning)
    return cfg, found


def setup_logging(args, cfg):
    """Log as [logging] says, unless the command line says otherwise: -v forces
    debug, --log the target. Opens the log file: call it before any fork or
    privilege drop."""
    settings = cfg.logging
    try:
        logs.setup(logging.DEBUG if args.verbose else settings.level,
                   args.log or settings.target, settings.path)
    except OSError as exc:
        raise ConfigError(f"{cfg.path}: [logging] path = {settings.path!r}: cannot open it "
                          f"for appending: {exc.strerror or exc}") from None


# -- the daemons -------------------------------------------------------------

def cmd_run(args):
    return _supervise(args, dispatcher=True, workers=True)


def cmd_dispatcher(args):
    return _supervise(args, dispatcher=True, workers=False)


def cmd_workerpool(args):
    return _supervise(args, dispatcher=False, workers=True)


def child_specs(cfg, dispatcher, workers, default_user=None, found=None):
    """The ChildSpecs of one component: the dispatcher's, the worker groups', or both.

    Children of groups without `user:` run as `default_user` (None: as the
    supervisor). A group's settings include its plugin's version (`found`: the
    discovered entry points), so that a reload after an upgrade restarts it.
    """
    # Imported here: the supervisor pulls in gevent, which `submit` does not need.
    from .dispatcher import run_dispatcher
    from .supervisor import ChildSpec
    from .worker import run_worker
    specs = []
    if dispatcher and cfg.dispatcher.processes:
        specs.append(ChildSpec("dispatcher", cfg.dispatcher.processes,
                               functools.partial(run_dispatcher, cfg.amqp, cfg.dispatcher),
                               user=default_user, stop_timeout=cfg.dispatcher.stop_timeout,
                               settings=(cfg.amqp, cfg.dispatcher), queue=amqp.TASK_QUEUE))
    if workers:
        for group in cfg.groups:
            specs.append(ChildSpec(group.name, group.processes,
                                   functools.partial(run_worker, group, cfg.amqp),
                                   user=group.user or default_user,
                                   stop_timeout=group.stop_timeout,
                                   task_timeout=group.task_timeout, queue=group.queue,
                                   settings=(cfg.amqp, group, tuple(sorted(group.options.items())),
                                             _plugin_version((found or {}).get(group.worker_type)))))
    return specs


def _plugin_version(ep):
    dist = getattr(ep, "dist", None)
    return (ep.value, dist.name, dist.version) if dist is not None else getattr(ep, "value", None)


def _supervise(args, dispatcher, workers):
    from . import endpoints
    from .child import UserSwitchError, drop_privileges
    from .supervisor import Supervisor
    if args.user:
        _check_user(args.user)
    logs.set_identity("supervisor")
    cfg, found = load_config(args, switches_users=workers, apply_logging=True)

    def specs():
        new, found = load_config(args, switches_users=workers)
        for section in ("logging", "supervisor", "metrics"):   # read once, at start
            if getattr(new, section) != getattr(cfg, section):
                log.warning("%s: [%s] changed; it applies when taskqueue restarts", new.path, section)
        return child_specs(new, dispatcher, workers, args.user, found)
    initial = child_specs(cfg, dispatcher, workers, args.user, found)
    # Before the privilege drop: a port below 1024, a socket in root's /run/taskqueue.
    serving = endpoints.open_all(cfg, args.command)
    if args.pidfile:
        _write_pidfile(args.pidfile)
    if args.user and os.getuid() == 0 and all(spec.user == args.user for spec in initial):
        # No group needs root to switch users: the supervisor gives it up too.
        # (A reload that names another user is then refused with the reason.)
        try:
            drop_privileges(args.user)
        except UserSwitchError as exc:
            raise ConfigError(str(exc)) from None
        log.info("running as user %s", args.user)
    supervisor = Supervisor(initial, reload=specs, endpoints=serving)
    try:
        return supervisor.run()
    finally:
        for endpoint in serving:
            endpoint.close()
        if args.pidfile:
            _remove_pidfile(args.pidfile)


def _check_user(name):
    import pwd
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"--user {name!r}: no such Unix user") from None


def _write_pidfile(path):
    try:
        with open(path, "w") as f:
            f.write(f"{os.getpid()}\n")
    except OSError as exc:
        raise ConfigError(f"cannot write pidfile {path}: {exc.strerror}") from None


def _remove_pidfile(path):
    try:
        with open(path) as f:
            if f.read().strip() != str(os.getpid()):
                return  # another instance owns it now
        os.unlink(path)
    except OSError:
        pass


# -- the tools -----------------------------------------------------------------

SUBMIT_EXIT_CODES = """\
exit status:
  0  submitted: every task confirmed by the broker (with --wait: the reply printed)
  1  broker problem (unreachable, refused a task; with --wait: no reply in time).
     With --file some tasks may be submitted: the summary on stderr says how many
     and the line to resume from
  2  bad input (TYPE, WORKITEM, a line of the file, the config): nothing submitted
  130  --file stopped by Ctrl-C: as 1 (a second Ctrl-C ends it at once)
"""


def cmd_submit(args):
    from .dispatcher import TYPE_PATTERN, TYPE_RULE
    if not TYPE_PATTERN.match(args.worker_type):
        raise ConfigError(f"TYPE {args.worker_type[:100]!r} is not {TYPE_RULE}")
    if args.file is not None:
        return _submit_file(args)
    cfg, _ = load_config(args, check_users=False)
    text = "null" if args.workitem is None else args.workitem
    if text == "-":
        text = sys.stdin.read()
    try:
        workitem = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"WORKITEM is not valid JSON ({exc}): {text[:100]!r}") from None
    message_id = uuid.uuid4().hex
    body = json.dumps({"worker_type": args.worker_type, "workitem": workitem}).encode()
    props = amqp.properties(content_type="application/json", delivery_mode=amqp.PERSISTENT,
                            message_id=message_id, correlation_id=message_id)
    if not args.wait:
        amqp.blocking_publish(cfg.amqp, amqp.TASK_QUEUE, body, props)
        print(message_id)
        return EXIT_OK
    reply = amqp.blocking_call(cfg.amqp, amqp.TASK_QUEUE, body, props, args.timeout)
    if reply is None:
        print(f"taskqueue: no reply to {message_id} within {args.timeout:g}s", file=sys.stderr)
        return EXIT_FAILURE
    sys.stdout.buffer.write(reply + (b"" if reply.endswith(b"\n") else b"\n"))
    return EXIT_OK


def _submit_file(args):
    from . import bulk
    if args.workitem is not None or args.wait:
        raise InputError("--file takes the workitems from the file: give no WORKITEM and no --wait")
    cfg, _ = load_config(args, check_users=False)
    tasks = bulk.read_tasks(args.file, args.worker_type)
    outcome = bulk.submit(cfg.amqp, args.worker_type, tasks)
    if outcome.error:
        print(f"taskqueue: {outcome.error}", file=sys.stderr)
    for line in bulk.summary(outcome, args.worker_type, args.file):
        print(line, file=sys.stderr)
    if outcome.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILURE if outcome.error else EXIT_OK


def cmd_check_config(args):
    path = config.resolve_path(args.config)
    found = plugins.discover()
    cfg = config.load(path, found)
    logging_line = _describe_logging(cfg)
    print(f"config: {path}: ok")
    for warning in cfg.warnings:
        print(f"warning: {warning}")
    print(f"broker: {amqp.describe(cfg.amqp)}")
    print(f"logging: {logging_line}")
    print("plugins found:" if found else "plugins found: none")
    for name, ep in sorted(found.items()):
        dist = f" ({ep.dist.name} {ep.dist.version})" if getattr(ep, "dist", None) else ""
        print(f"  {name}: {ep.value}{dist}")
    rows = [("dispatcher", "-", str(cfg.dispatcher.processes), "-", amqp.TASK_QUEUE)]
    rows += [(g.worker_type, g.subgroup or "-", str(g.processes), g.user or "-", g.queue)
             for g in cfg.groups]
    print("processes:")
    _print_table(("type", "subgroup", "count", "user", "queue"), rows)
    return EXIT_OK


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


def cmd_status(args):
    """Exit codes: overview.HEALTHY, UNHEALTHY, NO_SUPERVISOR, NO_BROKER (the highest that applies)."""
    from . import overview
    if not args.timeout > 0:
        raise ConfigError(f"--timeout {args.timeout:g}: expected a number of seconds > 0")
    # Users are not looked up: status shows what runs, whatever the password database says.
    cfg = config.load(config.resolve_path(args.config), plugins.discover(), check_users=False)
    view = overview.gather(cfg, args.timeout)
    if args.json:
        print(json.dumps(view, indent=2))
    else:
        print(overview.render(view), end="")
    for error in view["errors"]:   # the picture is incomplete: say so where errors go
        print(f"taskqueue: {error}", file=sys.stderr)
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
exit status: 0 done; 1 broker problem, or (requeue) some dead letters were not
requeued and stay in taskqueue_dead; 2 bad arguments, nothing done.
"""


def _dead_parser(sub, command):
    dead = sub.add_parser("dead", help="List, requeue or purge the dead letters (taskqueue_dead).",
                          description="List, requeue or purge the messages in taskqueue_dead.",
                          epilog=DEAD_LIMIT_NOTE, formatter_class=argparse.RawDescriptionHelpFormatter)
    tools = dead.add_subparsers(dest="dead_command", required=True, metavar="ACTION")
    p = command("list", cmd_dead_list, "Show the dead letters (reason, type, age, id) without "
                "removing them.", epilog=DEAD_LIMIT_NOTE + "\n" + DEAD_EXIT_CODES, parent=tools)
    p.add_argument("--json", action="store_true", help="print a JSON list, for scripts")
    p.add_argument("--type", metavar="TYPE", help="only dead letters of worker type TYPE")
    p.add_argument("--limit", metavar="N", type=_positive_int, help="show at most N dead letters")
    p = command("requeue", cmd_dead_requeue, "Send dead letters back to the dispatcher; each is "
                "removed from taskqueue_dead once the broker confirmed its copy.",
                epilog=DEAD_LIMIT_NOTE + "\n" + DEAD_EXIT_CODES, parent=tools)
    p.add_argument("--id", metavar="ID", action="append", dest="ids",
                   help="the dead letter with this id (as `dead list` shows it); repeatable")
    p.add_argument("--type", metavar="TYPE", help="the dead letters of worker type TYPE")
    p.add_argument("--all", action="store_true", help="every dead letter")
    p = command("purge", cmd_dead_purge, "Delete every dead letter.", parent=tools,
                epilog="Asks first on a terminal; elsewhere --yes is required.\n\n" +
                DEAD_EXIT_CODES)
    p.add_argument("--yes", action="store_true", help="do not ask")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return value


def cmd_dead_list(args):
    import shutil
    import time
    from . import deadtools
    cfg, _ = load_config(args, check_users=False)
    letters, count = deadtools.list_dead(cfg.amqp, args.type, args.limit, bodies=args.json)
    now = time.time()
    if args.json:
        print(json.dumps([deadtools.as_json(letter, now) for letter in letters], indent=1))
    else:
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
        print("\n".join(deadtools.listing(letters, count, now, args.type, width)))
    return EXIT_OK


def cmd_dead_requeue(args):
    from . import deadtools
    if args.all and (args.ids or args.type):
        raise InputError("dead requeue: --all takes every dead letter; give it alone, "
                         "or select with --id/--type")
    if not (args.all or args.ids or args.type):
        raise InputError("dead requeue: say which dead letters to requeue: --id ID (repeatable), "
                         "--type TYPE, or --all")
    cfg, _ = load_config(args, check_users=False)
    report = deadtools.requeue_dead(cfg.amqp, args.ids or (), args.type)
    print("\n".join(report.done()))
    for problem in report.problems():
        print(f"taskqueue: {problem}", file=sys.stderr)
    return EXIT_FAILURE if report.problems() else EXIT_OK


def cmd_dead_purge(args):
    from . import deadtools
    if not args.yes and not sys.stdin.isatty():
        raise InputError("dead purge: not on a terminal, so nobody can confirm: "
                         "add --yes to purge taskqueue_dead")
    cfg, _ = load_config(args, check_users=False)
    if not args.yes:
        count = deadtools.count_dead(cfg.amqp)
        if count == 0:
            print(f"{amqp.DEAD_QUEUE} is empty: nothing to purge")
            return EXIT_OK
        print(f"Purge {deadtools.count_text(count)} from {amqp.DEAD_QUEUE}? [y/N] ",
              end="", file=sys.stderr, flush=True)
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            print("nothing purged")
            return EXIT_FAILURE
    purged = deadtools.purge_dead(cfg.amqp)
    print(f"purged {deadtools.count_text(purged)} from {amqp.DEAD_QUEUE}")
    return EXIT_OK


def _print_table(header, rows):
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


if __name__ == "__main__":
    sys.exit(main())
