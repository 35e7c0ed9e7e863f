"""The `taskqueue` command line: its parser, and running the chosen command
(daemon.py runs the services, tools.py the rest)."""
import argparse
import logging
import os
import sys

from taskqueue import __version__, redact
from taskqueue.host import config, logs
# pika as taskqueue's processes use it (amqp.py, on import): headers decoded within
# bounds, one log line per failed connection attempt. Every command, not the Client.
from taskqueue.broker import amqp  # noqa: F401
from taskqueue.cli.daemon import cmd_dispatcher, cmd_run, cmd_workerpool
from taskqueue.cli.startup import EXIT_FAILURE, EXIT_NO_BROKER, EXIT_USAGE
from taskqueue.cli.cancel import CANCEL_EXIT_CODES, cmd_cancel
from taskqueue.cli.newplugin import cmd_new_plugin
from taskqueue.cli.schedules import SCHEDULES_EXIT_CODES, cmd_schedules
from taskqueue.cli.taskevents import EVENTS_EXIT_CODES, TASK_EXIT_CODES, cmd_events, cmd_task
from taskqueue.cli.tools import (DEAD_EXIT_CODES, DEAD_LIMIT_NOTE, STATUS_EXIT_CODES,
                                 SUBMIT_EXIT_CODES, cmd_check_config, cmd_dead_list, cmd_dead_purge,
                                 cmd_dead_requeue, cmd_status, cmd_submit)
from taskqueue.errors import BrokerUnreachable, ConfigError, InputError, PluginError, TaskqueueError
from taskqueue.printable import printable


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
        _say(exc)
        return EXIT_USAGE
    except BrokerUnreachable as exc:
        _say(exc)
        return EXIT_NO_BROKER
    except TaskqueueError as exc:
        _say(exc)
        return EXIT_FAILURE
    except BrokenPipeError:
        # `taskqueue dead list | head`: the reader is gone, so is the rest of the output.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE


def _say(exc):
    """An error on stderr: no password, and nothing it quotes (a queue name, a broker's
    or a publisher's text) acts on the terminal; its own lines stay lines."""
    print(f"taskqueue: {printable(redact.redact(exc), newlines=True)}", file=sys.stderr)


def _parser():
    parser = argparse.ArgumentParser(prog="taskqueue", description="A distributed task queue over AMQP.")
    parser.add_argument("--version", action="version", version=f"taskqueue {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, func, help_text, daemon=False, epilog=None, parent=sub, config_file=True):
        # An epilog is laid out by hand (exit codes, a command to copy): keep its lines.
        p = parent.add_parser(name, help=help_text, description=help_text, epilog=epilog,
                              formatter_class=argparse.RawDescriptionHelpFormatter if epilog
                              else argparse.HelpFormatter)
        if config_file:
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
                   help="wait for the worker's reply (sent to reply_to) and print its body; "
                        "a task that fails without one: its reason on stderr, exit status 5")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="with --wait: give up after SECONDS (default 30); exit status 1")
    p.add_argument("--delay", type=_seconds, metavar="SECONDS",
                   help="no worker gets the task before SECONDS (rounded up to whole "
                        "seconds, at most 1048575: 12 days) from now; it waits in the "
                        "broker's delay queues (taskqueue.delay.*)")
    p.add_argument("--priority", type=_priority, metavar="N",
                   help="the task's priority, 0 (the default) to 9: tasks of 5 and above "
                        "start before the lower ones of their type that wait (they go to "
                        "its queue worker_<type>+high)")
    p.add_argument("--expires", type=_seconds, metavar="SECONDS",
                   help="a task not started within SECONDS from now is never started; it "
                        "is recorded as expired (with --delay: longer than the delay)")
    p.add_argument("--file", metavar="PATH",
                   help="submit one task per line of PATH ('-': stdin), each line a workitem "
                        "as JSON; blank lines are skipped. The whole file is checked first: "
                        "one bad line and nothing is submitted")
    p.add_argument("--traceparent", metavar="TRACEPARENT",
                   help="the W3C trace context the task carries (header traceparent, "
                        "00-<32 hex>-<16 hex>-<2 hex>; default: the environment's "
                        "TRACEPARENT, if valid); the worker logs its trace id")
    p.add_argument("--tracestate", metavar="TRACESTATE",
                   help="with --traceparent: the W3C tracestate the task carries (default: "
                        "the environment's TRACESTATE)")
    _dead_parser(sub, command)
    command("check-config", cmd_check_config,
            "Validate the config; show the plugins found and the processes it would start.")
    p = command("status", cmd_status,
                "Show this host's supervisors, their processes, and the queues on the broker.",
                epilog=STATUS_EXIT_CODES)
    p.add_argument("--json", action="store_true", help="print one JSON document, for scripts")
    p.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                   help="wait at most SECONDS for each supervisor, for the broker and for "
                        "rabbitmqctl (default 5)")
    _events_parsers(command)
    p = command("cancel", cmd_cancel, "Cancel tasks by id, on every host: a queued or delayed "
                "task never starts, a running one is stopped; each is recorded as cancelled.",
                epilog=CANCEL_EXIT_CODES)
    p.add_argument("task_ids", nargs="+", metavar="ID", help="a task's id (its message id, as "
                   "`taskqueue submit` prints it)")
    p.add_argument("--since", type=_duration, metavar="DURATION",
                   help="look for the tasks' events this far back (90, 15m, 12h, 7d) instead "
                        "of from the time in each id")
    p = command("schedules", cmd_schedules, "Show the periodic tasks: each schedule, where it "
                "comes from, its next and last firing, and which pool leads it.",
                epilog=SCHEDULES_EXIT_CODES)
    p.add_argument("--json", action="store_true", help="print one JSON document, for scripts")
    # Reads no config: it writes files, nothing else.
    p = command("new-plugin", cmd_new_plugin, "Write a new plugin project that works as it "
                "stands: its worker, its tests (on taskqueue.testing), setup.py and debian/ "
                "for a .deb the pool picks up.", epilog=NEW_PLUGIN_EPILOG, config_file=False)
    p.add_argument("name", metavar="NAME",
                   help="the worker type; the plugin is taskqueue-NAME, its Python package "
                        "taskqueue_NAME ('-' as '_'), its .deb python3-taskqueue-NAME")
    p.add_argument("--dir", metavar="DIR",
                   help="write it here, a new or empty directory (default: ./taskqueue-NAME)")
    return parser


NEW_PLUGIN_EPILOG = """\
exit status: 0 written; 2 NAME unusable or reserved, or DIR neither new nor empty
(nothing was written over).
"""


def _events_parsers(command):
    p = command("task", cmd_task, "Show one task's history from the events stream, across "
                "hosts: each event in the order of its time, then how the task ended.",
                epilog=TASK_EXIT_CODES)
    p.add_argument("task_id", metavar="ID", help="the task's id (its message id, as `taskqueue "
                   "submit` prints it)")
    p.add_argument("--json", action="store_true",
                   help="print each event as one JSON object a line, for scripts (no summary)")
    p.add_argument("--since", type=_duration, metavar="DURATION",
                   help="read the events of the last DURATION (90, 15m, 12h, 7d) instead "
                        "of from the time in the task's id")
    p = command("events", cmd_events, "Print the task events of the last minutes, from every "
                "host; with --follow, go on as they come.", epilog=EVENTS_EXIT_CODES)
    p.add_argument("--follow", action="store_true",
                   help="keep printing events as they come, until Ctrl-C or SIGTERM")
    p.add_argument("--type", type=_worker_type, metavar="TYPE",
                   help="only events of tasks of worker type TYPE")
    p.add_argument("--task", metavar="ID", help="only events of the task with this id")
    p.add_argument("--since", type=_duration, metavar="DURATION",
                   help="start with the events of the last DURATION (90, 15m, 12h, 7d; "
                        "default 10m)")
    p.add_argument("--json", action="store_true",
                   help="print each event as one JSON object a line, for scripts")


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


def _seconds(text):
    """A number of seconds as given; its range is checked by the command (delays.py)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None


def _priority(text):
    """A priority, 0 to 9 (protocol/priorities.py)."""
    from taskqueue.protocol import priorities
    try:
        return priorities.checked(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text[:60]!r} is not a priority: expected an integer from 0 to "
            f"{priorities.HIGHEST}") from None


def _duration(text):
    """A duration back in time, as the config writes one (host/config.parse_duration)."""
    try:
        return config.parse_duration(text, low=0, high=config.MAX_RETENTION)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text[:100]!r}: {exc}") from None


def _worker_type(text):
    from taskqueue.protocol.routing import TYPE_PATTERN, TYPE_RULE
    if not TYPE_PATTERN.match(text):
        raise argparse.ArgumentTypeError(f"{text[:100]!r} is not {TYPE_RULE}")
    return text


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return value




if __name__ == "__main__":
    sys.exit(main())
