"""Read and validate config.ini into plain frozen objects.

Owns the meaning of every option. Does no I/O besides reading the file and
looking users up in the password database; never imports pika or plugins.
"""
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, Optional

#: Where the packaged config lives; `--config` or TASKQUEUE_CONFIG override it.
DEFAULT_PATH = "/etc/taskqueue/config.ini"

#: Section names taskqueue itself owns; a plugin may not be named like one.
RESERVED_SECTIONS = frozenset({"DEFAULT", "amqp", "dispatcher", "logging", "metrics", "supervisor"})


@dataclass(frozen=True)
class AmqpSettings:
    """How to reach the broker ([amqp] section)."""
    host: str = "localhost"
    port: int = 5672
    vhost: str = "/"
    user: str = "guest"
    password: str = field(default="guest", repr=False)
    heartbeat: Optional[int] = None      # None: take the broker's proposal
    url: Optional[str] = None            # when set, overrides all of the above


@dataclass(frozen=True)
class WorkerGroup:
    """A set of identical processes: one worker type, or one subgroup of it.

    `options` holds every option of the group's section, [DEFAULT] and the
    type's section merged in, as strings: plugins read their own settings
    from it (BaseWorker.factory receives the group).
    """
    worker_type: str
    subgroup: Optional[str]
    processes: int
    user: Optional[str] = None
    prefetch: int = 1
    stop_timeout: float = 30.0
    options: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), compare=False)

    @property
    def name(self) -> str:
        """`type` or `type/subgroup`: the name used in logs and status."""
        return self.worker_type if self.subgroup is None else f"{self.worker_type}/{self.subgroup}"

    @property
    def queue(self) -> str:
        return f"worker_{self.worker_type}"


@dataclass(frozen=True)
class DispatcherSettings:
    """[dispatcher]: how many dispatcher processes and their prefetch."""
    processes: int = 1
    prefetch: int = 256
    stop_timeout: float = 30.0


@dataclass(frozen=True)
class Config:
    path: str
    amqp: AmqpSettings
    dispatcher: DispatcherSettings
    groups: tuple            # of WorkerGroup, enabled ones only (processes > 0)
    warnings: tuple = ()     # of str, each a sentence naming file and section
