"""Body formats from plugins: entry points in the group `taskqueue.formats`.

An entry point's name is the content type it reads; it points at a function
`read(body) -> (worker_type, workitem bytes)` that raises, with a reason, on a
body it cannot read. `discover()` reads metadata only: the supervisor calls it
so that a reload (SIGHUP) after a format is installed, upgraded or removed
restarts the dispatcher children. `load_installed()` imports the formats, in
a dispatcher child as it starts; a format that fails to load is kept as a
Format with a `problem`, which dead-letters its own messages only.
"""
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable, Optional

from taskqueue.protocol.routing import BUILTIN_TYPES, media_type
from taskqueue.runtime.plugins import origin

#: The entry-point group format plugins register in; the entry point's name is the content type.
GROUP = "taskqueue.formats"


@dataclass(frozen=True)
class Format:
    content_type: str
    origin: str                        # "module:function from distribution version"
    read: Optional[Callable] = None    # read(body) -> (worker_type, workitem bytes)
    problem: Optional[str] = None      # why it reads nothing: the reason its messages die with


def discover():
    """{content type: [entry points]} of every installed format, metadata only.

    Names are compared as media types (lowercase, no parameters). A content
    type registered by two distributions keeps both, for load_installed to refuse.
    """
    found = {}
    for ep in entry_points(group=GROUP):
        eps = found.setdefault(media_type(ep.name), [])
        if all(other.value != ep.value for other in eps):
            eps.append(ep)
    return found


def fingerprint(found):
    """What a format's entry points are, as a sorted tuple: a change means a restart."""
    return tuple(sorted((content_type, origin(ep)) for content_type, eps in found.items()
                        for ep in eps))


def load_installed(found=None):
    """Import every installed format: {content type: Format}. Never raises."""
    found = discover() if found is None else found
    return {content_type: load(content_type, eps) for content_type, eps in found.items()}


def load(content_type, eps):
    """One format from its entry point(s); a Format with a `problem` if it cannot read."""
    named = f"format {content_type} ({' and '.join(origin(ep) for ep in eps)})"
    if len(eps) > 1:
        return Format(content_type, origin(eps[0]), problem=(
            f"{named}: content type {content_type!r} is registered twice in {GROUP!r}; "
            f"uninstall one of them"))
    ep = eps[0]
    if not content_type or "/" not in content_type:
        return Format(content_type, origin(ep), problem=(
            f"{named}: the entry point's name {ep.name!r} is not a content type (type/subtype)"))
    if content_type in BUILTIN_TYPES:
        return Format(content_type, origin(ep), problem=(
            f"{named}: {content_type} is read by taskqueue itself; a format cannot replace it"))
    try:
        read = ep.load()
    except BaseException as exc:  # a plugin may raise anything at import, even SystemExit
        return Format(content_type, origin(ep), problem=(
            f"{named} failed to load: {type(exc).__name__}: {str(exc)[:200]}"))
    if not callable(read):
        return Format(content_type, origin(ep), problem=(
            f"{named} is not callable: {ep.value} is a {type(read).__name__}"))
    return Format(content_type, origin(ep), read=read)
