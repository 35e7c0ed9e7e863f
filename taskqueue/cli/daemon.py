"""The daemons: `run`, `dispatcher` and `workerpool` each build the child specs
of their component from the config and run a supervisor over them."""
import functools
import logging
import os

from taskqueue.cli.startup import load_config
from taskqueue.errors import ConfigError
from taskqueue.host import config, logs
from taskqueue.protocol import topology
from taskqueue.runtime import formats
from taskqueue.supervision.specs import ChildSpec

log = logging.getLogger("taskqueue")


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
    from taskqueue.runtime.dispatcher import run_dispatcher
    from taskqueue.worker import run_worker
    specs = []
    if dispatcher and cfg.dispatcher.processes:
        specs.append(ChildSpec("dispatcher", cfg.dispatcher.processes,
                               functools.partial(run_dispatcher, cfg.amqp, cfg.dispatcher),
                               user=default_user, stop_timeout=cfg.dispatcher.stop_timeout,
                               settings=(cfg.amqp, cfg.dispatcher,
                                         formats.fingerprint(formats.discover())),
                               queue=topology.TASK_QUEUE, kind="dispatcher"))
    if workers:
        for group in cfg.groups:
            specs.append(ChildSpec(group.name, group.processes,
                                   functools.partial(run_worker, group, cfg.amqp,
                                                     entry_point=(found or {}).get(
                                                         group.worker_type)),
                                   user=group.user or default_user,
                                   stop_timeout=group.stop_timeout,
                                   task_timeout=group.task_timeout, queue=group.queue,
                                   settings=(cfg.amqp, group, tuple(sorted(group.options.items())),
                                             _plugin_version((found or {}).get(group.worker_type)))))
    if workers and cfg.schedules:
        # One per pool; the pools agree through the broker which of them fires what.
        from taskqueue.runtime.scheduler import run_scheduler
        specs.append(ChildSpec("scheduler", 1,
                               functools.partial(run_scheduler, cfg.amqp, cfg.schedules),
                               user=default_user, settings=(cfg.amqp, cfg.schedules),
                               kind="scheduler"))
    return specs


def _plugin_version(ep):
    dist = getattr(ep, "dist", None)
    return (ep.value, dist.name, dist.version) if dist is not None else getattr(ep, "value", None)


def _supervise(args, dispatcher, workers):
    from taskqueue.errors import UserSwitchError
    from taskqueue.supervision import endpoints
    from taskqueue.supervision.child import drop_privileges
    from taskqueue.supervision.supervisor import Supervisor
    if args.user:
        _check_user(args.user)
    logs.set_identity("supervisor")
    # Started as root: its files must stay root's, in reloads after the drop too.
    as_root = os.geteuid() == 0
    cfg, found = load_config(args, switches_users=workers, apply_logging=True,
                             with_schedules=workers)
    refuse_unsafe_files(cfg, as_root)

    def specs():
        new, found = load_config(args, switches_users=workers, with_schedules=workers)
        refuse_unsafe_files(new, as_root)
        for section in ("logging", "supervisor", "metrics"):   # read once, at start
            if getattr(new, section) != getattr(cfg, section):
                log.warning("%s: [%s] changed; it applies when taskqueue restarts", new.path, section)
        return child_specs(new, dispatcher, workers, args.user, found)
    initial = child_specs(cfg, dispatcher, workers, args.user, found)
    # Before the privilege drop: a port below 1024, a socket in root's /run/taskqueue.
    serving = endpoints.open_all(cfg, args.command)
    if args.pidfile:
        _write_pidfile(args.pidfile)
    dropping = bool(args.user and os.getuid() == 0
                    and all(spec.user == args.user for spec in initial))
    graveyard = _make_graveyard(cfg, args.user, dropping)
    if dropping:
        # No group needs root to switch users: the supervisor gives it up too.
        # (A reload that names another user is then refused with the reason.)
        try:
            drop_privileges(args.user)
        except UserSwitchError as exc:
            raise ConfigError(str(exc)) from None
        log.info("running as user %s", args.user)
    supervisor = Supervisor(initial, reload=specs, endpoints=serving, graveyard=graveyard)
    try:
        return supervisor.run()
    finally:
        for endpoint in serving:
            endpoint.close()
        if args.pidfile:
            _remove_pidfile(args.pidfile)


def _make_graveyard(cfg, user, dropping):
    """The supervisor's graveyard, made before the privilege drop: as root, in the
    status_dir (/run/taskqueue, root's), given to `user` (--user) when the supervisor
    becomes that user (`dropping`); a root supervisor that stays root may fork
    children of other users, who must read it (graveyard.Graveyard, `shared`).
    Stale graveyards of root's and of `user`'s are swept."""
    import pwd
    from taskqueue.supervision.graveyard import Graveyard, graveyard_parent
    pw = pwd.getpwnam(user) if user else None
    owner = (pw.pw_uid, pw.pw_gid) if pw and dropping else None
    return Graveyard.create(graveyard_parent(cfg.supervisor.status_dir), owner=owner,
                            shared=os.geteuid() == 0 and not dropping,
                            sweep_also=(pw.pw_uid,) if pw else ())


def refuse_unsafe_files(cfg, as_root):
    """A config holding the broker's password, or a password_file or tls_key_file, that
    every user can read is refused; so is, by a supervisor started as root, one of them
    that a user other than root could change (config.unsafe_files)."""
    problem = config.unsafe_files(cfg, as_root)
    if problem:
        raise ConfigError(problem)


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
