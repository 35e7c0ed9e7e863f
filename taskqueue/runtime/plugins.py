"""Find worker plugins by entry-point metadata, and load one on demand.

`discover()` reads metadata only: the supervisor calls it and must never
import plugin code (so a fork inherits none of it and an upgraded plugin is
picked up by the next child). `load()` runs in the worker child.
"""
from importlib.metadata import entry_points

from taskqueue.errors import PluginError

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


def load(worker_type, group):
    """Import the plugin of `worker_type` and build its worker for `group`.

    Any failure becomes a PluginError that says which plugin and why.
    """
    ep = discover().get(worker_type)
    if ep is None:
        raise PluginError(f"plugin {worker_type!r} is not installed (no entry point in {GROUP!r})")
    try:
        factory = ep.load()
    except BaseException as exc:  # a plugin may raise anything at import, even SystemExit
        raise PluginError(f"plugin {worker_type!r} ({origin(ep)}) failed to import: "
                          f"{type(exc).__name__}: {exc}") from exc
    try:
        worker = factory(group)
    except BaseException as exc:
        raise PluginError(f"plugin {worker_type!r} ({origin(ep)}) failed to construct its worker: "
                          f"{type(exc).__name__}: {exc}") from exc
    if not callable(getattr(worker, "handle_task", None)):
        raise PluginError(f"plugin {worker_type!r} ({origin(ep)}): {ep.value} returned "
                          f"{type(worker).__name__}, which has no handle_task method")
    return worker


def origin(ep):
    """`module:attr from distribution version`: where an entry point comes from, for messages."""
    dist = getattr(ep, "dist", None)
    where = f" from {dist.name} {dist.version}" if dist is not None else ""
    return f"{ep.value}{where}"
