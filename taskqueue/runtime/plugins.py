"""Find worker plugins by entry-point metadata, and load one on demand.

`discover()` reads metadata only: the supervisor calls it and must never
import plugin code (so a fork inherits none of it and an upgraded plugin is
picked up by the next child). `load()` runs in the worker child.

Packages ship schedules too (group schedules.ENTRY_POINTS): `load_schedules()`
imports the module each such entry point names, wherever the config is read
(the supervisors, check-config): a package keeps its schedules in a module of
their own, with no import of its worker code.
"""
from importlib.metadata import entry_points

from taskqueue.errors import PluginError
from taskqueue.protocol import schedules

#: The entry-point group plugins register in; the entry point's name is the worker type.
GROUP = "worker.plugins"


def discover():
    """Return {worker_type: entry_point} for every installed plugin.

    A type registered by two distributions is ambiguous: raise PluginError
    naming both instead of picking one silently.
    """
    found = {}
    for ep in entry_points(group=GROUP):
        other = found.get(ep.name)
        if other is not None and other.value != ep.value:
            raise PluginError(
                f"worker type {ep.name!r} is registered twice: {origin(other)} and {origin(ep)}; "
                f"uninstall one of them")
        found[ep.name] = ep
    return found


def load(worker_type, group, entry_point=None):
    """Import the plugin of `worker_type` and build its worker for `group`.

    Any failure becomes a PluginError that says which plugin and why. A group whose
    type is a program (`command:`) gets a CommandWorker instead: no plugin to import.
    `entry_point`: the one the supervisor discovered, which spares the child a scan of
    every distribution's metadata (a few ms each, for 200 children starting at once);
    one that no longer imports (its plugin upgraded or removed since) is looked up
    again among those installed now.
    """
    if group is not None and getattr(group, "command", None):
        # Here, in the worker child: the supervisor and the tools need none of it.
        from taskqueue.runtime.commandworker import CommandWorker
        return CommandWorker.factory(group)
    ep = entry_point or _installed(worker_type)
    try:
        factory = _import(worker_type, ep)
    except PluginError:
        if entry_point is None:
            raise
        ep = _installed(worker_type)
        if ep.value == entry_point.value:
            raise   # the same one: importing it again would fail again
        factory = _import(worker_type, ep)
    try:
        worker = factory(group)
    except BaseException as exc:
        raise PluginError(f"plugin {worker_type!r} ({origin(ep)}) failed to construct its worker: "
                          f"{type(exc).__name__}: {exc}") from exc
    if not callable(getattr(worker, "handle_task", None)):
        raise PluginError(f"plugin {worker_type!r} ({origin(ep)}): {ep.value} returned "
                          f"{type(worker).__name__}, which has no handle_task method")
    return worker


def _installed(worker_type):
    ep = discover().get(worker_type)
    if ep is None:
        raise PluginError(f"plugin {worker_type!r} is not installed (no entry point in {GROUP!r})")
    return ep


def _import(worker_type, ep):
    try:
        return ep.load()
    except BaseException as exc:  # a plugin may raise anything at import, even SystemExit
        raise PluginError(f"plugin {worker_type!r} ({origin(ep)}) failed to import: "
                          f"{type(exc).__name__}: {exc}") from exc


def origin(ep):
    """`module:attr from distribution version`: where an entry point comes from, for messages."""
    dist = getattr(ep, "dist", None)
    where = f" from {dist.name} {dist.version}" if dist is not None else ""
    return f"{ep.value}{where}"


def load_schedules(found=None):
    """(the schedules installed packages ship, one problem line per entry point that
    could not be used). Each entry point is loaded and parsed on its own: one that
    fails to import, names a bad schedule, or shares its name with another package's
    is left out, and the others go on. `found`: the entry points (tests pass theirs)."""
    found = entry_points(group=schedules.ENTRY_POINTS) if found is None else found
    loaded, problems, names = {}, [], {}
    for ep in found:
        names.setdefault(ep.name, []).append(ep)
    for name, eps in sorted(names.items()):
        if len(eps) > 1:
            problems.append(f"error: schedule {name!r} is shipped twice: "
                            f"{' and '.join(origin(ep) for ep in eps)}; both left out "
                            "(uninstall one, or define it in the config's [schedules])")
            continue
        try:
            loaded[name] = schedules.from_entry_point(name, _value(eps[0]), source(eps[0]))
        except Exception as exc:   # noqa: BLE001 - a package may raise anything at import
            problems.append(f"error: schedule {name!r} of {source(eps[0])} (entry point "
                            f"{schedules.ENTRY_POINTS} {name} = {eps[0].value}) left out: "
                            f"{str(exc)[:500] or type(exc).__name__}")
    return tuple(loaded.values()), tuple(problems)


def schedule_names():
    """The names of the schedules installed packages ship (metadata only)."""
    return frozenset(ep.name for ep in entry_points(group=schedules.ENTRY_POINTS))


def _value(ep):
    try:
        return ep.load()
    except BaseException as exc:   # a module may raise anything at import, even SystemExit
        raise PluginError(f"failed to import: {type(exc).__name__}: {exc}") from exc


def source(ep):
    """`package DIST VERSION` (a Schedule's source), or `package ?` without metadata."""
    dist = getattr(ep, "dist", None)
    return f"package {dist.name} {dist.version}" if dist is not None else "package ?"
