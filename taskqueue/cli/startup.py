"""What every command does as it starts: read the config and find the plugins,
set up logging; and the exit codes they share."""
import dataclasses
import logging
import os

from taskqueue.errors import ConfigError
from taskqueue.host import config, logs
from taskqueue.protocol import schedules
from taskqueue.runtime import plugins

log = logging.getLogger("taskqueue")

EXIT_OK = 0
EXIT_FAILURE = 1      #: the command ran and failed (the broker refused a task, children killed...)
EXIT_USAGE = 2        #: bad arguments or configuration; nothing was done
EXIT_NO_BROKER = 4    #: no broker could be reached (connection, TLS, login refused); nothing was done
EXIT_TASK_FAILED = 5  #: submit --wait: the task ended without a reply (the worker's failure reply)
EXIT_NO_EVENTS = 6    #: task, events: no event of the task, or no events stream at all
EXIT_INTERRUPTED = 130  #: stopped by Ctrl-C (SIGINT), as shells report it


def load_config(args, switches_users=False, apply_logging=False, check_users=True,
                with_schedules=False):
    """The config and the installed plugins. Only a command that runs the worker
    groups (switches_users) needs to be able to become their users; the others
    just check that the users exist, or, for the tools (submit, dead), ignore them.
    `with_schedules`: the packages' schedules merged in (read_config), for the commands
    that fire or show them: loading them imports the modules packages name, which
    `submit` and the other tools have no reason to run."""
    path = config.resolve_path(args.config)
    found = plugins.discover()
    options = {"check_users": check_users,
               "running_uid": os.getuid() if switches_users else None}
    cfg = read_config(path, found, **options) if with_schedules else \
        config.load(path, found, **options)
    if apply_logging:
        setup_logging(args, cfg)
    for warning in cfg.warnings:
        log.warning("%s", warning)
    return cfg, found


def read_config(path, found, **options):
    """config.load(path, found, **options) with the packages' schedules merged in:
    `cfg.schedules` is the final list, and a package schedule left out is one of
    `cfg.warnings` (the daemons log them, check-config prints them)."""
    packaged, problems = plugins.load_schedules()
    # Every name a package ships counts, loaded or not: a setting for a schedule whose
    # package is broken is no error of the config's.
    cfg = config.load(path, found, package_schedules=plugins.schedule_names(), **options)
    merged = schedules.merge(packaged, cfg.schedules, cfg.schedules_off, cfg.schedule_settings)
    return dataclasses.replace(cfg, schedules=merged, warnings=cfg.warnings + problems)


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
