"""What the supervisor runs: a ChildSpec per group of identical children, and
how two lists of them differ (what a reload must start, restart or stop).

Pure data: no gevent, no I/O, so that commands and tests can build specs
without pulling in the supervisor.
"""
from dataclasses import dataclass, field
from typing import Callable, Optional

#: What a child can be.
KINDS = ("dispatcher", "worker", "scheduler")


@dataclass(frozen=True)
class ChildSpec:
    """What to run in `processes` identical children.

    Two specs are equal when everything that shapes their children is: the
    `settings` (config values the target reads) included, the target
    function itself excluded. A reload restarts the children of a spec that
    is no longer equal to its old self.
    """
    name: str                       # "dispatcher", "worker1", "worker2/bifh1"
    processes: int
    target: Callable = field(compare=False)   # target(ctx) -> exit code, runs in the child
    user: Optional[str] = None
    stop_timeout: float = 30.0
    task_timeout: Optional[float] = None
    settings: tuple = ()
    queue: Optional[str] = None     # what its children consume, for status and metrics
    #: What its children are: "worker", "dispatcher" or "scheduler" (KINDS). The one place that
    #: says so: status, metrics and the children's log lines read it.
    kind: str = "worker"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"child spec {self.name!r}: kind {self.kind!r} is not one of {KINDS}")


def diff_specs(old, new):
    """Compare two lists of specs by name: (added, changed, removed, unchanged), new specs
    for the first two, old ones for the last two."""
    before = {spec.name: spec for spec in old}
    after = {spec.name: spec for spec in new}
    added = [spec for name, spec in after.items() if name not in before]
    changed = [spec for name, spec in after.items() if name in before and before[name] != spec]
    removed = [spec for name, spec in before.items() if name not in after]
    unchanged = [spec for name, spec in before.items() if after.get(name) == spec]
    return added, changed, removed, unchanged
