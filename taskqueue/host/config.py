"""Read and validate config.ini into plain frozen objects.

Owns the meaning of every option. Does no I/O besides reading the file, the
secret and TLS files it names (tls.load keeps the context built from them, for
children that drop privileges; keptsecrets.py what they gave, for reloads after
the supervisor's own drop), looking users up in the password database, and,
when asked (exposed_secret, untrusted_files), the modes and owners of those
files and of the directories on their way, and whether a `command:` names an
executable file; never imports pika or plugins.
"""
import configparser
import ipaddress
import math
import os
import pwd
import re
import shlex
import stat
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Mapping, Optional
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from taskqueue import redact
from taskqueue.host import filetrust, keptsecrets, tls
from taskqueue.protocol import delays, schedules as schedule_lines
from taskqueue.protocol.durations import format_span, parse_duration  # noqa: F401 (config's API)
from taskqueue.protocol.events import DEFAULT_MAX_BYTES, DEFAULT_RETENTION
from taskqueue.protocol.ratelimits import RateLimit, parse_rate_limit
from taskqueue.protocol.replies import parse_reply_queues
from taskqueue.protocol.retries import RetryPolicy

from taskqueue.errors import ConfigError, TlsFileError
from taskqueue.protocol.topology import QUEUE_TYPES

#: Where the packaged config lives; `--config` or TASKQUEUE_CONFIG override it.
DEFAULT_PATH = "/etc/taskqueue/config.ini"

#: Section names taskqueue itself owns; a plugin may not be named like one. `scheduler`
#: owns no section: it names the pool's scheduler child, which a group may not be named.
RESERVED_SECTIONS = frozenset({"DEFAULT", "amqp", "dispatcher", "logging", "metrics", "schedules",
                               "scheduler", "supervisor"})


@dataclass(frozen=True)
class AmqpSettings:
    """How to reach the broker ([amqp] section)."""
    host: str = "localhost"
    port: int = 5672
    vhost: str = "/"
    user: str = "guest"
    password: str = field(default="guest", repr=False)
    heartbeat: Optional[int] = None      # None: take the broker's proposal
    # Holds the password when the URL does: never in a repr (a log line may show settings).
    url: Optional[str] = field(default=None, repr=False)   # when set, overrides all of the above
    queue_type: str = "quorum"           # of every queue taskqueue declares
    consumer_timeout: float = 1800.0     # the broker's consumer_timeout (RabbitMQ's default)
    delivery_limit: int = 5              # deliveries of one task before it is dead-lettered
    tls: bool = False                    # `tls: yes`, or an amqps:// url (in a list: those only)
    tls_ca_file: Optional[str] = None    # None: the system's CAs
    tls_server_name: Optional[str] = None  # None: the host as written
    tls_cert_file: Optional[str] = None  # a client certificate, with tls_key_file
    tls_key_file: Optional[str] = None
    auth: str = "plain"                  # plain: user/password; external: the client certificate
    #: Seconds one broker of the list may take to accept the connection and finish the
    #: AMQP handshake before the next is tried (a host that drops packets never refuses).
    connect_timeout: float = 5.0
    #: Bytes of a message body taskqueue takes; a bigger one is dead-lettered (inbound.py).
    max_body_size: int = 16 * 2**20
    #: Task events (protocol/events.py): written to the events stream unless `events: no`;
    #: its retention (seconds) and size, set by whichever process declares it first.
    events: bool = True
    events_retention: float = float(DEFAULT_RETENTION)
    events_max_bytes: int = DEFAULT_MAX_BYTES

    @property
    def hosts(self):
        """The brokers to try in turn: host names, or URLs when `url` is set."""
        if self.url:
            return tuple(split_urls(self.url))
        return tuple(h.strip() for h in self.host.split(","))


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
    lookahead: float = 0.1                 # seconds; see intake.py (0: off)
    stop_timeout: float = 30.0
    task_timeout: Optional[float] = None   # seconds; the supervisor kills a task running longer
    max_tasks: Optional[int] = None        # a process is replaced after this many tasks
    max_memory: Optional[int] = None       # MiB of resident memory; replaced after its task
    retry: RetryPolicy = RetryPolicy()     # max_retries, retry_delay, retry_backoff, retry_max_delay
    reply_queues: tuple = ()               # where channel.reply() may send besides reply queues
    #: At most so many starts of the type per period, on every host together / on this
    #: host (protocol/ratelimits.py); None: no limit.
    rate_limit: Optional[RateLimit] = None
    rate_limit_per_host: Optional[RateLimit] = None
    #: `command:` (its argv, PATH first): the type is a program run once per task
    #: (runtime/commandworker.py), not an installed plugin; None: a plugin.
    command: Optional[tuple] = None
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


#: Where supervisors put their status sockets: the init scripts' /run directory.
DEFAULT_STATUS_DIR = "/run/taskqueue"


@dataclass(frozen=True)
class SupervisorSettings:
    """[supervisor]: where each supervisor answers `taskqueue status`.

    Every supervisor listens on `<status_dir>/taskqueue-<command>.sock`, named
    like the init scripts' pidfiles (taskqueue-workerpool, taskqueue-dispatcher).
    """
    status_dir: str = DEFAULT_STATUS_DIR


@dataclass(frozen=True)
class MetricsSettings:
    """[metrics]: each supervisor's optional Prometheus endpoint; off unless it has a port.

    Both services read the same file, so each has its own port: `port` is the
    worker pool's (`workerpool`, and `run`, which is both), `dispatcher_port`
    the dispatcher's.
    """
    address: str = "127.0.0.1"
    port: Optional[int] = None
    dispatcher_port: Optional[int] = None
    #: RabbitMQ's management API (`http://host:15672/`), asked with [amqp]'s user and
    #: password for the unacked counts AMQP does not tell; None: no such gauge.
    management_url: Optional[str] = None

    def port_for(self, command):
        """The port the supervisor of `command` serves metrics on, or None."""
        return self.dispatcher_port if command == "dispatcher" else self.port


@dataclass(frozen=True)
class LoggingSettings:
    """[logging]: how much to log, and where (logs.py does it)."""
    level: str = "info"                  # one of LOG_LEVELS
    target: str = "auto"                 # one of LOG_TARGETS; auto: see logs.choose_target
    path: Optional[str] = None           # the file of target `file`


@dataclass(frozen=True)
class Config:
    path: str
    amqp: AmqpSettings
    dispatcher: DispatcherSettings
    groups: tuple            # of WorkerGroup, enabled ones only (processes > 0)
    warnings: tuple = ()     # of str, each a sentence naming file and section
    logging: LoggingSettings = LoggingSettings()
    supervisor: SupervisorSettings = SupervisorSettings()
    metrics: MetricsSettings = MetricsSettings()
    #: The options of the file that hold a secret or name one ("[amqp] password"...):
    #: such a file must not be readable by every user (see exposed_secret).
    secret_options: tuple = ()
    #: (option, path) of each file the config names that holds a secret: checked like
    #: the config itself (exposed_secret, untrusted_files).
    secret_files: tuple = ()
    #: [schedules]: the schedules the config defines (protocol/schedules.Schedule), the
    #: names it turns off (`NAME: off`), and its settings for schedules a package defines
    #: ({name: {setting: value}}). cli/startup.load_config merges the packages' in:
    #: there `schedules` is the final list.
    schedules: tuple = ()
    schedules_off: tuple = ()
    schedule_settings: Mapping[str, Mapping] = field(
        default_factory=lambda: MappingProxyType({}), compare=False)


#: A plugin (entry-point) name: usable as a section name and a queue suffix.
_TYPE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")
_SUBGROUP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
#: A `workers` value that reads as a number is a count, never a subgroup
#: name, so `workers: 2.5` or `workers: -1` is reported as a bad count.
_NUMBER_LIKE = re.compile(r"[+-]?[0-9.]*")
#: No header can name this default section, which turns configparser's
#: [DEFAULT] inheritance off: each section keeps only its own options, and
#: load() merges [DEFAULT] in only where the contract says it applies.
_NO_DEFAULT = "\x00"
AMQP_OPTIONS = ("url", "host", "port", "vhost", "user", "password", "password_file",
                "heartbeat", "queue_type", "delivery_limit", "consumer_timeout",
                "tls", "tls_ca_file", "tls_server_name", "tls_cert_file", "tls_key_file", "auth",
                "connect_timeout", "max_body_size", "events", "events_retention",
                "events_max_bytes")
#: Options that say how to connect, which `url` replaces; the others go with either
#: (password_file too: it gives the password of the URL's user).
CONNECTION_OPTIONS = ("host", "port", "vhost", "user", "password", "heartbeat", "tls")
#: [amqp] options that name a file holding a secret (tls_key_file: TLS's client key).
SECRET_FILE_OPTIONS = ("tls_key_file",)
#: [amqp] options naming a file whose content is a secret: exposed or writable by
#: someone else, it is refused as the config would be.
SECRET_PATH_OPTIONS = ("password_file", "tls_key_file")
#: Said of a secret file a reload cannot read: taskqueue runs as its own user by then.
AFTER_DROP = (" (taskqueue gave up root after it started: a file it did not read then is read "
              "when it restarts, or when its user may read it)")
#: The password used when the config gives none: RabbitMQ's well-known default, no secret.
DEFAULT_PASSWORD = "guest"
#: Options naming a file read when the config is loaded (tls.load).
TLS_FILE_OPTIONS = ("tls_ca_file", "tls_cert_file", "tls_key_file")
AUTH_MECHANISMS = ("plain", "external")
#: What taskqueue reads in a worker type's or subgroup's section (with [DEFAULT]'s);
#: any other option there is the plugin's own (WorkerGroup.options).
GROUP_OPTIONS = ("workers", "user", "prefetch", "lookahead", "stop_timeout", "task_timeout",
                 "max_tasks", "max_memory", "max_retries", "retry_delay", "retry_backoff",
                 "retry_max_delay", "reply_queues", "rate_limit", "rate_limit_per_host",
                 "command")
DISPATCHER_OPTIONS = ("workers", "prefetch", "stop_timeout")
LOGGING_OPTIONS = ("level", "target", "path")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_TARGETS = ("auto", "syslog", "stderr", "file")
SUPERVISOR_OPTIONS = ("status_dir",)
METRICS_OPTIONS = ("address", "port", "dispatcher_port", "management_url")
#: [schedules]: a schedule (NAME: WHEN TYPE [WORKITEM], or off) and its settings.
SCHEDULE_OPTIONS = ("NAME",) + tuple(f"NAME.{key}" for key in schedule_lines.SETTINGS)
COUNT = "a process count (integer >= 0)"
SUBGROUPS = "a comma-separated list of subgroup names"


# -- converters: pure; a ValueError says what was expected ---------------------

def parse_int(value, low, high=None, expected=None):
    text = value.strip()
    if text.isascii() and text.isdigit() and low <= int(text) <= (int(text) if high is None else high):
        return int(text)
    raise ValueError(expected or (f"expected an integer >= {low}" if high is None
                                  else f"expected an integer from {low} to {high}"))


parse_count = partial(parse_int, low=0, expected=f"expected {COUNT}")
parse_positive_int = partial(parse_int, low=1)
parse_retries = partial(parse_int, low=0, expected="expected a number of retries (integer >= 0)")
#: AMQP carries prefetch counts and heartbeats in 16 bits.
parse_prefetch = partial(parse_int, low=1, high=65535)
parse_heartbeat = partial(parse_int, low=0, high=65535)
parse_port = partial(parse_int, low=1, high=65535)


def parse_number(value, accept, expected):
    """A finite number for which accept(number) holds; else ValueError(expected)."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if math.isfinite(number) and accept(number):
        return number
    raise ValueError(expected)


parse_seconds = partial(parse_number, accept=lambda n: n > 0,
                        expected="expected a number of seconds > 0")
#: Longer is a mistake (milliseconds?): the next broker waits that long behind a dead one.
MAX_CONNECT_TIMEOUT = 300
parse_connect_timeout = partial(parse_number, accept=lambda n: 0 < n <= MAX_CONNECT_TIMEOUT,
                                expected=f"expected a number of seconds > 0 and at most "
                                         f"{MAX_CONNECT_TIMEOUT}")
parse_backoff = partial(parse_number, accept=lambda n: n >= 1,
                        expected="expected a factor >= 1 (1: the same delay every time)")
#: RabbitMQ takes no bigger message (its max_message_size cannot exceed 512 MiB).
MAX_BODY_SIZE = 512 * 2**20
_SIZE = re.compile(r"([0-9]+)\s*(|b|kib|k|mib|m|gib|g)", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "m": 2**20, "mib": 2**20,
               "g": 2**30, "gib": 2**30}


def parse_size(value):
    """`16777216`, `16 MiB`, `512 KiB`, `1M`: a number of bytes from 1 to MAX_BODY_SIZE
    (K, M and G are KiB, MiB and GiB)."""
    match = _SIZE.fullmatch(value.strip())
    size = int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()] if match else 0
    if not 1 <= size <= MAX_BODY_SIZE:
        raise ValueError(f"expected a size in bytes from 1 to {MAX_BODY_SIZE} (512 MiB), "
                         "optionally with a unit: KiB, MiB or GiB (16 MiB)")
    return size


#: The longest events_retention: a year; RabbitMQ takes more, nobody means it.
MAX_RETENTION = 366 * 86400


parse_retention = partial(parse_duration, low=60, high=MAX_RETENTION)
#: The smallest stream worth keeping: a few segments.
MIN_STREAM_SIZE = 2**20


def parse_stream_size(value):
    """events_max_bytes: a size as parse_size reads it, from 1 MiB to 1 TiB."""
    match = _SIZE.fullmatch(value.strip())
    size = int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()] if match else 0
    if not MIN_STREAM_SIZE <= size <= 2**40:
        raise ValueError("expected a size from 1 MiB to 1 TiB, optionally with a unit: "
                         "KiB, MiB or GiB (1 GiB)")
    return size


parse_lookahead = partial(parse_number, accept=lambda n: n >= 0,
                          expected="expected a number of seconds >= 0 (0 turns lookahead off)")


def parse_retry_max_delay(value):
    seconds = parse_seconds(value)
    if seconds > delays.MAX_DELAY:
        raise ValueError(f"expected at most {delays.MAX_DELAY} seconds (the longest delay, "
                         "about 12 days)")
    return seconds


def parse_directory(value):
    """An absolute path, normalised (`/run/taskqueue/` -> `/run/taskqueue`)."""
    if not os.path.isabs(value.strip()) or "\0" in value:
        raise ValueError("expected the absolute path of a directory")
    return os.path.normpath(value.strip())


def parse_address(value):
    """An IP address to listen on, as written (`127.0.0.1`, `::1`, `0.0.0.0`)."""
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError("expected an IP address to listen on, such as 127.0.0.1, ::1 "
                         "or 0.0.0.0") from None


def parse_management_url(value):
    """`http://host:15672/`: where RabbitMQ's management API answers, without credentials
    (those are [amqp]'s: a password here would be one more secret in the file)."""
    url = value.strip()
    try:
        parts = urlsplit(url)
        parts.port   # noqa: B018  raises ValueError on a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected the http:// or https:// URL of RabbitMQ's management API, "
                         "such as http://127.0.0.1:15672/")
    if parts.username is not None or parts.password is not None:
        raise ValueError("expected no user or password in the URL ([amqp]'s are used)")
    if parts.query or parts.fragment:
        raise ValueError("expected no query or fragment in the URL")
    return url.rstrip("/")


def parse_subgroups(value):
    """`a, b` -> ("a", "b"): valid names, each listed once."""
    names = tuple(name.strip() for name in value.split(","))
    for name in names:
        if not _SUBGROUP_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a subgroup name; expected {SUBGROUPS} "
                             "(letters, digits, '_', '.', '-')")
        if names.count(name) > 1:
            raise ValueError(f"subgroup {name!r} is listed twice; expected each subgroup once")
    return names


def parse_workers(value):
    """A type section's `workers`: a count (int) or subgroup names (tuple)."""
    if not _NUMBER_LIKE.fullmatch(value.strip()):
        return parse_subgroups(value)
    try:
        return parse_count(value)
    except ValueError:
        raise ValueError(f"expected {COUNT} or {SUBGROUPS}") from None


def parse_text(value, expected="a non-empty value"):
    if not value.strip():
        raise ValueError(f"expected {expected}")
    return value.strip()


parse_user = partial(parse_text, expected="a Unix user name")


def split_urls(value):
    """`amqp://a/, amqp://b/` -> the URLs; a comma inside a URL is kept."""
    return [url for url in re.split(r"\s*,\s*(?=amqps?://)", value.strip(), flags=re.I) if url]


#: Words a shell would read as operators: `command:` is not run by a shell, so one of
#: these would reach the program as an argument, which is never what was meant.
SHELL_OPERATORS = frozenset({"|", "||", "&", "&&", ";", ";;", "<", ">", ">>", "<<", "2>",
                             "2>&1", ">&", "&>", "$(", "`"})


def parse_command(value):
    """`/path/to/program arg...` -> its argv (shlex-split: quotes as a shell's, but no
    shell runs it): PATH absolute, an existing regular file, executable."""
    try:
        argv = tuple(shlex.split(value))
    except ValueError as exc:   # an unclosed quote, a trailing backslash
        raise ValueError(f"expected a program and its arguments, quoted as in a shell "
                         f"({exc})") from None
    if not argv:
        raise ValueError("expected the absolute path of a program, then its arguments")
    if any("\0" in arg for arg in argv):
        raise ValueError("expected no NUL character")
    junk = [arg for arg in argv if arg in SHELL_OPERATORS or arg.startswith("$(")
            or "`" in arg]
    if junk:
        raise ValueError(f"{junk[0]!r} is shell syntax, and no shell runs the command; expected "
                         "a program and its arguments (for a pipeline, a script of its own, or "
                         "/bin/sh -c '...')")
    path = argv[0]
    if not os.path.isabs(path):
        raise ValueError(f"{path!r} is not an absolute path; expected the absolute path of "
                         "the program (no PATH lookup)")
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc}; expected an executable file") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path} is not a regular file; expected an executable file")
    if not mode & 0o111 or not os.access(path, os.X_OK):
        raise ValueError(f"{path} is not executable (mode {stat.S_IMODE(mode):04o}); "
                         f"expected an executable file (chmod +x {path})")
    return argv


def parse_yes_no(value):
    """yes/no, true/false, on/off, 1/0, in any case: configparser's booleans."""
    word = value.strip().lower()
    if word not in configparser.ConfigParser.BOOLEAN_STATES:
        raise ValueError("expected yes or no")
    return configparser.ConfigParser.BOOLEAN_STATES[word]


def parse_hosts(value):
    """`a, b` -> "a, b": one or more host names or addresses, tried in turn."""
    if not all(host.strip() for host in value.split(",")):
        raise ValueError("expected a host name or address, or several separated by commas")
    return value.strip()


def parse_choice(value, choices):
    """One of `choices`, in any case."""
    if value.strip().lower() not in choices:
        raise ValueError(f"expected one of {', '.join(choices)}")
    return value.strip().lower()


parse_queue_type = partial(parse_choice, choices=QUEUE_TYPES)
parse_log_level = partial(parse_choice, choices=LOG_LEVELS)
parse_log_target = partial(parse_choice, choices=LOG_TARGETS)


def parse_log_path(value):
    if not os.path.isabs(value.strip()) or value.strip().endswith("/") or "\0" in value:
        raise ValueError("expected the absolute path of a file")
    return value.strip()


def parse_amqp_url(value):
    """One URL, or several separated by commas, each amqp:// or amqps://."""
    for url in split_urls(value) or [""]:
        _parse_one_url(url)
    return value.strip()


def _parse_one_url(value):
    scheme, _, rest = value.strip().partition("://")
    if scheme.lower() not in ("amqp", "amqps") or not rest:
        raise ValueError("expected a URL starting with amqp:// or amqps://")
    try:
        urlsplit(value.strip()).port
    except ValueError:
        raise ValueError("expected a URL whose port is an integer from 1 to 65535") from None
    return value.strip()


def url_passwords(value):
    """The passwords of the URLs of `value`, as written and decoded."""
    written = [urlsplit(url).password for url in split_urls(value)]
    return [form for password in written if password for form in (password, unquote(password))]


def resolve_path(cli_path: Optional[str], environ=os.environ) -> str:
    """--config, else $TASKQUEUE_CONFIG, else the packaged path."""
    return cli_path or environ.get("TASKQUEUE_CONFIG") or DEFAULT_PATH


# -- load ----------------------------------------------------------------------

def system_uid(name):
    """The uid of Unix user `name`; KeyError if there is none."""
    return pwd.getpwnam(name).pw_uid


def load(path: str, installed_types, *, check_users: bool = True,
         running_uid: Optional[int] = None, uid_of=system_uid,
         package_schedules=None) -> Config:
    """Read `path` and return the Config for the plugins `installed_types`.

    Raise one ConfigError listing every problem, one per line.
    `check_users=False` skips the password database: neither the users'
    existence nor the `running_uid` check is done. `uid_of(name)` looks a
    user up (KeyError when missing); tests pass their own user database.
    `package_schedules`: the names of the schedules installed packages define; when
    given, a [schedules] setting for a name defined nowhere is an error (None: not
    known, not checked).
    """
    loader = _Loader(path, _read_sections(path), check_users, running_uid, uid_of)
    lists = _subgroup_lists(loader.sections)
    types = sorted(loader.check_types(installed_types)
                   + loader.command_types(installed_types, lists))
    loader.check_ambiguous(types, lists)
    groups = [group for name in types for group in loader.groups(name)]
    amqp, dispatcher, logging = loader.amqp(), loader.dispatcher(), loader.logging()
    supervisor, metrics = loader.supervisor(), loader.metrics(amqp)
    schedules, off, settings = loader.schedules(package_schedules)
    loader.check_task_timeouts(groups, amqp)
    loader.check_rate_limits(groups)
    if loader.errors:
        raise ConfigError("\n".join(dict.fromkeys(loader.errors)))
    claimed = {f"{owner}_{subgroup}" for owner, names in lists.items() for subgroup in names}
    return Config(path, amqp, dispatcher,
                  tuple(sorted(groups, key=lambda g: (g.worker_type, g.subgroup or ""))),
                  loader.warnings(types, claimed), logging, supervisor=supervisor,
                  metrics=metrics, secret_options=secret_options(loader.sections),
                  secret_files=secret_files(loader.sections), schedules=schedules,
                  schedules_off=off, schedule_settings=settings)


def group_of_section(worker_type, options, source):
    """The WorkerGroup a config file whose section [`worker_type`] holds `options`
    ({option: value as written}) gives, built as load() builds it (taskqueue.testing: a
    plugin's tests pass its section without a file). `source` stands for the file in
    messages. Users are not looked up. ConfigError naming `source`, the section and the
    option for a bad value, as load() words it; also for a section that gives no
    single group (`workers: 0`, or a list of subgroups). A number stands for what a
    file would write (3 for `max_retries: 3`)."""
    loader = _Loader(source, {}, False, None, system_uid)
    section = {}
    for name, value in options.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(name, str) or not isinstance(value, str):
            loader.fail(worker_type, name, value, "expected an option name and its value as "
                        "a config file writes them (strings; a number is taken too)")
            continue
        section[name.lower()] = value
    loader.sections = {worker_type: section}
    if "workers" in section:
        processes = loader.convert([worker_type], "workers", None, parse_count)
    else:
        processes = 1
    if processes == 0:
        loader.fail(worker_type, "workers", section["workers"],
                    "expected a process count of 1 or more: no process would run the task")
    groups = [loader.group(worker_type, None, processes, [worker_type])] if processes else []
    if loader.errors:
        raise ConfigError("\n".join(dict.fromkeys(loader.errors)))
    return groups[0]


def secret_options(sections):
    """The options of a config file that hold a secret or name a file that does:
    `[amqp] password`, a `url` with a password, `tls_key_file`."""
    own = sections.get("amqp", {})
    found = [option for option in ("password",) + SECRET_FILE_OPTIONS if option in own]
    if any(urlsplit(url).password is not None for url in split_urls(own.get("url", ""))):
        found.insert(0, "url")
    return tuple(f"[amqp] {option}" for option in found)


def secret_files(sections):
    """(option, path) of the [amqp] password_file and tls_key_file the config names."""
    own = sections.get("amqp", {})
    return tuple((f"[amqp] {option}", own[option].strip()) for option in SECRET_PATH_OPTIONS
                 if own.get(option, "").strip())


def _world_readable(path, stat):
    """The mode of `path` when every user may read it, else None (also when it cannot be
    looked at: a file gone since it was read, or one behind a directory the dropped
    user may not search, whose content was checked at start)."""
    try:
        mode = stat(path).st_mode
    except (OSError, ValueError):   # ValueError: a NUL in the path, refused by the loader
        return None
    return mode & 0o777 if mode & 0o004 else None


def exposed_secret(cfg, stat=os.stat):
    """Why `cfg` must not be used: its file holds a secret, or names a file that is one
    (password_file, tls_key_file), and every user may read it (as ssh refuses a key
    others can read); one line per such file; None when it is fine."""
    problems = []
    mode = _world_readable(cfg.path, stat) if cfg.secret_options else None
    if mode is not None:
        problems.append(f"{cfg.path}: holds {', '.join(cfg.secret_options)} and is readable "
                        f"by every user (mode {mode:04o}); refusing to use it: chmod 640 "
                        f"{cfg.path} (group taskqueue), or keep the password in [amqp] "
                        "password_file")
    for option, path in cfg.secret_files:
        mode = _world_readable(path, stat)
        if mode is not None:
            problems.append(f"{path}: the {option} of {cfg.path} is readable by every user "
                            f"(mode {mode:04o}); refusing to use it: chmod 600 {path} "
                            "(or 640, group taskqueue)")
    return "\n".join(problems) or None


def untrusted_files(cfg, trusted=filetrust.ROOT_ONLY):
    """Why a root supervisor must not use `cfg`: the config, its password_file, one of
    its TLS files, or a `command:` program run without `user:` could be changed by a user other than root (filetrust.py: a CA file
    of theirs would let them stand in for the broker); one line per such file; None
    when only root can. A file that cannot be looked at (the dropped user may not
    search its directory) was checked when taskqueue started."""
    named = dict(cfg.secret_files)
    for option in ("tls_ca_file", "tls_cert_file"):
        if getattr(cfg.amqp, option):
            named[f"[amqp] {option}"] = getattr(cfg.amqp, option)
    # A program run without `user:` runs as the supervisor's user, root perhaps: whoever
    # may change it runs code as that user (one with `user:` runs as that user alone).
    for group in cfg.groups:
        if group.command and group.user is None:
            named[f"[{_section_of(group)}] command"] = group.command[0]
    problems = []
    for what, path in (("the config", cfg.path),) + tuple(
            (f"the {option} of {cfg.path}", path) for option, path in named.items()):
        try:
            problem = filetrust.writable_by_others(os.path.abspath(path), trusted)
        except OSError:
            continue
        if problem is not None:
            problems.append(f"{path}: refusing to use {what} as root: {problem}")
    return "\n".join(problems) or None


def unsafe_files(cfg, as_root):
    """exposed_secret(cfg) and, for a process that runs or ran as root, untrusted_files(cfg):
    what the daemons refuse and check-config reports; None when nothing."""
    problems = [exposed_secret(cfg), untrusted_files(cfg) if as_root else None]
    return "\n".join(problem for problem in problems if problem) or None


def _read_sections(path):
    """{section: {option: value}} as written in the file, [DEFAULT] included."""
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:   # permission denied, a directory...
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read config file: byte {exc.start} is not UTF-8; "
                          "expected a UTF-8 text file") from None
    parser = configparser.ConfigParser(interpolation=None, default_section=_NO_DEFAULT)
    try:
        parser.read_string(text, source=path)
    except configparser.Error as exc:
        raise ConfigError(_syntax_error(path, exc, text.splitlines())) from None
    sections = {name: dict(parser.items(name)) for name in parser.sections()}
    if "schedules" in sections:
        # A schedule's name keeps its case (it names a package's schedule, a queue and
        # message ids); options elsewhere are case-insensitive. The first read already
        # refused two names that differ in case only.
        exact = configparser.ConfigParser(interpolation=None, default_section=_NO_DEFAULT)
        exact.optionxform = str
        exact.read_string(text, source=path)
        sections["schedules"] = dict(exact.items("schedules"))
    return sections


def _subgroup_lists(sections):
    """{section: subgroup names} for each section whose `workers` lists some.

    Uninstalled types count too: their subgroup sections are not stray.
    """
    lists = {}
    for name, options in sections.items():
        try:
            names = parse_workers(options.get("workers", "0"))
        except ValueError:
            continue   # groups() reports it if the type is installed
        if isinstance(names, tuple) and name not in RESERVED_SECTIONS:
            lists[name] = names
    return lists


def _syntax_error(path, exc, lines):
    """configparser's error as one line per problem, with file and line; `lines`: the file's."""
    where = f"{path}, line {getattr(exc, 'lineno', '?')}"
    if isinstance(exc, configparser.DuplicateSectionError):
        return f"{where}: section [{exc.section}] appears twice; expected each section once"
    if isinstance(exc, configparser.DuplicateOptionError):
        return f"{where}: [{exc.section}] {exc.option} is set twice; expected each option once per section"
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f"{where}: {exc.line.strip()!r} is outside any section; expected a [section] header first"
    if isinstance(exc, configparser.ParsingError):
        # Only the line numbers come from the exception: what it keeps of each line
        # changed between releases (3.11: its repr, 3.13: the line); the text is the file's.
        numbers = [error[0] for error in exc.errors if error and isinstance(error[0], int)]
        return "\n".join(f"{path}, line {n}: cannot parse {_line(lines, n)!r}; "
                         "expected 'option: value' or a [section] header"
                         for n in numbers) or f"{path}: {exc}"
    return f"{path}: {exc}"


def _line(lines, number):
    return lines[number - 1].strip() if 0 < number <= len(lines) else ""


def _section_of(group):
    return group.worker_type if group.subgroup is None else f"{group.worker_type}_{group.subgroup}"


def _shown(option, value):
    """The value as quoted in messages, without the broker password."""
    if option == "password":
        return "'***'"
    return repr(redact.redact(value) if option == "url" else value)


class _Loader:
    """One load: the file's sections as written, and the problems found."""

    def __init__(self, path, sections, check_users, running_uid, uid_of):
        self.path, self.sections = path, sections
        self.check_users, self.running_uid, self.uid_of = check_users, running_uid, uid_of
        self.errors = []
        self.notes = []      # warnings found on the way (warnings() adds them)
        self.commands = set()   # the types that are a `command:` (command_types)

    def fail(self, section, option, value, expected):
        self.errors.append(f"{self.path}: [{section}] {option} = {_shown(option, value)}: {expected}")

    def convert(self, chain, option, default, parse):
        """Parse `option` from the first section of `chain` that sets it."""
        section = next((name for name in chain if option in self.sections.get(name, {})), None)
        if section is None:
            return default
        value = self.sections[section][option]
        try:
            return parse(value)
        except ValueError as exc:
            self.fail(section, option, value, str(exc))
            return None

    def check_types(self, installed_types):
        """The usable plugin names, sorted; the others are reported."""
        usable = []
        for name in sorted(set(installed_types), key=str):
            if not isinstance(name, str) or not _TYPE_NAME.fullmatch(name):
                self.errors.append(f"{self.path}: worker plugin {name!r} has an unusable name; "
                                   "expected 1-200 letters, digits, '_', '.' or '-'")
            elif name in RESERVED_SECTIONS or name.lower() == "default":
                self.errors.append(f"{self.path}: worker plugin {name!r} is named like the reserved "
                                   f"section [{name}]; expected a plugin name other than "
                                   f"{', '.join(sorted(RESERVED_SECTIONS))} (rename its entry point)")
            else:
                usable.append(name)
        return usable

    def command_types(self, installed_types, lists):
        """The worker types the file makes of a program: each section with its own
        `command:` whose name is a type's (not a subgroup's, a reserved one, [DEFAULT]),
        and is no installed plugin's type; every other `command:` is reported."""
        subgroups = {f"{owner}_{name}": owner for owner, names in lists.items() for name in names}
        for name, options in self.sections.items():
            if "command" not in options:
                continue
            value = options["command"]
            if name == "DEFAULT" or name in RESERVED_SECTIONS:
                self.fail(name, "command", value, "expected command: in a worker type's own "
                          "section (its name is the worker type), not here")
            elif name in subgroups:
                self.fail(name, "command", value, f"expected command: in the type's section "
                          f"[{subgroups[name]}]: its subgroups all run its command")
            elif not _TYPE_NAME.fullmatch(name):
                self.fail(name, "command", value, "the section's name is the worker type: "
                          "expected 1-200 letters, digits, '_', '.' or '-' in it")
            elif name in installed_types:
                ep = installed_types.get(name) if hasattr(installed_types, "get") else None
                plugin = f" ({ep.value})" if hasattr(ep, "value") else ""
                self.fail(name, "command", value, f"worker type {name!r} is also an installed "
                          f"plugin's: entry point {name!r} in worker.plugins{plugin}; expected "
                          "one or the other (rename this section, or uninstall the plugin)")
            elif self.convert([name], "command", None, parse_command) is not None:
                self.commands.add(name)
        return sorted(self.commands)

    def check_ambiguous(self, types, lists):
        """Report sections meaning both a plugin's and a subgroup's, or two subgroups'."""
        meanings = {name: [(True, f"the section of worker plugin {name!r}")] for name in types}
        for owner, names in lists.items():
            for subgroup in names:
                what = f"subgroup {subgroup!r} of [{owner}] workers = {self.sections[owner]['workers']!r}"
                meanings.setdefault(f"{owner}_{subgroup}", []).append((owner in types, what))
        for section, claims in meanings.items():
            # A section shared only by uninstalled types harms nothing yet.
            if len(claims) > 1 and any(installed for installed, _ in claims):
                self.errors.append(f"{self.path}: [{section}] is ambiguous: it is "
                                   f"{' and '.join(what for _, what in claims)}; expected one meaning "
                                   "per section (rename the plugin or the subgroup)")

    def groups(self, worker_type):
        """The enabled groups of one installed type."""
        if "workers" not in self.sections.get(worker_type, {}):
            spec = self.convert(["DEFAULT"], "workers", 1, parse_count)   # never a list
        else:
            spec = self.convert([worker_type], "workers", None, parse_workers)
        if not isinstance(spec, tuple):
            return [self.group(worker_type, None, spec, [worker_type, "DEFAULT"])] if spec else []
        groups = []
        for subgroup in spec:
            section = f"{worker_type}_{subgroup}"
            if section not in self.sections:
                self.fail(worker_type, "workers", self.sections[worker_type]["workers"],
                          f"expected a section [{section}] for subgroup {subgroup!r}, found none")
                continue
            # Its count is its own or [DEFAULT]'s: the type's `workers` is the list.
            processes = self.convert([section, "DEFAULT"], "workers", 1, parse_count)
            if processes:
                chain = [section, worker_type, "DEFAULT"]
                groups.append(self.group(worker_type, subgroup, processes, chain))
        return groups

    def group(self, worker_type, subgroup, processes, chain):
        options = {}
        for section in reversed(chain):
            options.update(self.sections.get(section, {}))
        options["workers"] = str(processes)
        return WorkerGroup(worker_type, subgroup, processes,
                           user=self.convert(chain, "user", None, self.parse_user),
                           prefetch=self.convert(chain, "prefetch", 1, parse_prefetch),
                           lookahead=self.convert(chain, "lookahead", 0.1, parse_lookahead),
                           stop_timeout=self.convert(chain, "stop_timeout", 30.0, parse_seconds),
                           task_timeout=self.convert(chain, "task_timeout", None, parse_seconds),
                           max_tasks=self.convert(chain, "max_tasks", None, parse_positive_int),
                           max_memory=self.convert(chain, "max_memory", None, parse_positive_int),
                           retry=self.retry_policy(chain),
                           reply_queues=self.convert(chain, "reply_queues", (),
                                                     parse_reply_queues) or (),
                           rate_limit=self.convert(chain, "rate_limit", None, parse_rate_limit),
                           rate_limit_per_host=self.convert(chain, "rate_limit_per_host", None,
                                                            parse_rate_limit),
                           command=self.convert([worker_type], "command", None, parse_command)
                           if worker_type in self.commands else None,
                           options=MappingProxyType(options))

    def retry_policy(self, chain):
        """The group's retry options; a bad one is reported (the group is not built then)."""
        values = dict(max_retries=self.convert(chain, "max_retries", 0, parse_retries),
                      delay=self.convert(chain, "retry_delay", 1.0, parse_seconds),
                      backoff=self.convert(chain, "retry_backoff", 2.0, parse_backoff),
                      max_delay=self.convert(chain, "retry_max_delay", 3600.0, parse_retry_max_delay))
        if None in values.values():
            return RetryPolicy()   # reported already: the load fails
        policy = RetryPolicy(**values)
        if policy.max_delay < policy.delay:
            section = next((name for name in chain
                            if "retry_max_delay" in self.sections.get(name, {})), None)
            if section is not None:
                self.fail(section, "retry_max_delay", self.sections[section]["retry_max_delay"],
                          f"expected at least retry_delay ({policy.delay:g} s)")
            else:
                section = next(name for name in chain if "retry_delay" in self.sections.get(name, {}))
                self.fail(section, "retry_delay", self.sections[section]["retry_delay"],
                          f"expected at most retry_max_delay ({policy.max_delay:g} s, its default)")
        return policy

    def check_task_timeouts(self, groups, amqp):
        """A task may not outlive the broker's patience: past consumer_timeout the broker
        closes the channel, and the task is redelivered however well it went."""
        limit = amqp.consumer_timeout
        for group in groups:
            if group.task_timeout is not None and limit is not None and group.task_timeout >= limit:
                section = group.worker_type if group.subgroup is None else \
                    f"{group.worker_type}_{group.subgroup}"
                self.fail(section, "task_timeout", group.options.get("task_timeout", ""),
                          f"expected less than the broker's consumer timeout ({limit:g} s, "
                          "[amqp] consumer_timeout)")

    def check_rate_limits(self, groups):
        """A type has one limit of each kind: subgroups that disagree would each get a
        bucket of their own (ratelimits.py names a bucket after its limit)."""
        for option in ("rate_limit", "rate_limit_per_host"):
            first = {}
            for group in groups:
                limit = getattr(group, option)
                seen = first.setdefault(group.worker_type, (limit, group))
                if seen[0] != limit:
                    section = f"{group.worker_type}_{group.subgroup}"
                    self.fail(section, option, group.options.get(option, ""),
                              f"expected the same {option} as [{_section_of(seen[1])}] "
                              f"({seen[0] or 'none'}): a type has one limit, shared by its "
                              "subgroups (set it in the type's section)")

    def parse_user(self, value):
        name = parse_user(value)
        if not self.check_users:
            return name
        try:
            uid = self.uid_of(name)
        except KeyError:
            raise ValueError("expected the name of an existing Unix user (no such user)") from None
        if self.running_uid not in (None, 0) and uid != self.running_uid:
            raise ValueError(f"cannot switch to this user (uid {uid}) without root; "
                             f"taskqueue runs as uid {self.running_uid}")
        return name

    def own_options(self, section, known):
        """A reserved section's options, each unknown one reported."""
        options = self.sections.get(section, {})
        for option in (option for option in options if option not in known):
            self.errors.append(f"{self.path}: [{section}] {option}: unknown option; "
                               f"expected one of {', '.join(known)}")
        return options

    def amqp(self):
        own, chain = self.own_options("amqp", AMQP_OPTIONS), ["amqp"]   # no [DEFAULT] here
        queues = dict(queue_type=self.convert(chain, "queue_type", "quorum", parse_queue_type),
                      delivery_limit=self.convert(chain, "delivery_limit", 5, parse_positive_int),
                      consumer_timeout=self.convert(chain, "consumer_timeout", 1800.0,
                                                    parse_seconds),
                      connect_timeout=self.convert(chain, "connect_timeout", 5.0,
                                                   parse_connect_timeout),
                      max_body_size=self.convert(chain, "max_body_size",
                                                 AmqpSettings.max_body_size, parse_size),
                      events=self.convert(chain, "events", True, parse_yes_no),
                      events_retention=self.convert(chain, "events_retention",
                                                    AmqpSettings.events_retention,
                                                    parse_retention),
                      events_max_bytes=self.convert(chain, "events_max_bytes",
                                                    AmqpSettings.events_max_bytes,
                                                    parse_stream_size))
        password = self.password(own)
        if "url" in own:
            others = [option for option in CONNECTION_OPTIONS if option in own]
            if others:
                self.fail("amqp", "url", own["url"],
                          f"expected either url or {', '.join(others)}, not both")
            url = self.convert(chain, "url", None, parse_amqp_url)
            if url and password is not None:
                url = self.url_with_password(url, password, own)
            for secret in url_passwords(url or ""):   # hidden in free text too
                redact.remember(secret)
            # TLS options apply to the amqps:// URLs of the list (pikaparams.parameters).
            schemes = {u.partition("://")[0].lower() for u in split_urls(url or "")}
            base = dict(url=url, tls="amqps" in schemes)
        else:
            use_tls = self.convert(chain, "tls", False, parse_yes_no)
            base = dict(host=self.convert(chain, "host", "localhost", parse_hosts),
                        port=self.convert(chain, "port", 5671 if use_tls else 5672, parse_port),
                        vhost=own.get("vhost", "/"), user=own.get("user", "guest"),
                        password=DEFAULT_PASSWORD if password is None else password,
                        heartbeat=self.convert(chain, "heartbeat", None, parse_heartbeat),
                        tls=use_tls)
        return AmqpSettings(**base, **queues, **self.tls_options(own, chain, base["tls"]))

    def tls_options(self, own, chain, use_tls):
        """The TLS and auth options, each file read now (tls.load): a missing, unreadable
        or non-PEM file, or a key that does not match its certificate, is named."""
        options = dict(auth=self.convert(chain, "auth", "plain",
                                         partial(parse_choice, choices=AUTH_MECHANISMS)))
        for option in TLS_FILE_OPTIONS + ("tls_server_name",):
            options[option] = own[option].strip() if own.get(option, "").strip() else None
        given = [option for option in TLS_FILE_OPTIONS + ("tls_server_name",) if option in own]
        for option in TLS_FILE_OPTIONS:
            if options[option] is not None and "\0" in options[option]:   # open() would raise
                self.fail("amqp", option, own[option], "expected a path without NUL characters")
                return options
        if given and not use_tls:
            self.fail("amqp", given[0], own[given[0]],
                      "expected TLS to be on (tls = yes, or an amqps:// url)")
            return options
        cert, key = options["tls_cert_file"], options["tls_key_file"]
        if (cert is None) != (key is None):
            missing, present = ("tls_key_file", "tls_cert_file") if key is None \
                else ("tls_cert_file", "tls_key_file")
            self.fail("amqp", present, own[present], f"expected {missing} alongside it")
            return options
        if options["auth"] == "external":
            if cert is None:
                self.fail("amqp", "auth", own["auth"], "expected tls_cert_file and tls_key_file "
                          "(the broker maps the client certificate to a user)")
            for option in ("password", "password_file", "user"):
                if option in own:
                    self.fail("amqp", option, own[option], "expected no user or password with "
                              "auth = external (the client certificate names the user)")
            self.refuse_url_credentials(own)
        if use_tls:
            try:
                tls.load(options["tls_ca_file"], cert, key)
            except TlsFileError as exc:
                self.fail("amqp", exc.option, exc.path, exc.reason + (
                    AFTER_DROP if exc.denied and keptsecrets.dropped() else ""))
        return options

    def refuse_url_credentials(self, own):
        """With auth = external a URL carries no user:password: the broker would never
        see them, and a password left in the file is a secret for nothing."""
        urls = [urlsplit(one) for one in split_urls(own.get("url", ""))]
        for kind, given in (("password", any(u.password is not None for u in urls)),
                            ("user", any(u.username for u in urls))):
            if given:
                self.fail("amqp", "url", own["url"], "expected no user or password in the URL "
                          "with auth = external: the client certificate authenticates, so "
                          f"a {kind} there would be ignored"
                          + (", and is a secret in the file" if kind == "password" else ""))
                return

    def password(self, own):
        """The password `password` or `password_file` gives (None: neither), remembered
        for redaction. The file is read now, while taskqueue may still be root."""
        if "password" in own and "password_file" in own:
            self.fail("amqp", "password_file", own["password_file"],
                      "expected either password or password_file, not both")
            return None
        if "password_file" in own:
            password = self.read_password(own["password_file"].strip())
        else:
            password = own.get("password")
        if password is not None and password != DEFAULT_PASSWORD:
            redact.remember(password)
        return password

    def read_password(self, path):
        where = f"{self.path}: [amqp] password_file = {path!r}"
        if not os.path.isabs(path) or "\0" in path:   # (open() raises ValueError for a NUL)
            self.errors.append(f"{where}: expected the absolute path of a file")
            return None

        def reader():
            with open(path, encoding="utf-8") as stream:
                return stream.read().splitlines()
        try:
            # After the privilege drop a reload keeps what the file gave at start.
            lines = keptsecrets.read(path, reader, f"{self.path}: [amqp] password_file {path}")
        except OSError as exc:
            self.errors.append(f"{where}: cannot read it: {exc.strerror or exc}"
                               + (AFTER_DROP if keptsecrets.denied(exc) and keptsecrets.dropped()
                                  else ""))
            return None
        except UnicodeDecodeError:
            self.errors.append(f"{where}: cannot read it: expected a UTF-8 text file")
            return None
        if not lines or not lines[0]:
            self.errors.append(f"{where}: the file is empty; expected the password on its "
                               "first line")
            return None
        if len(lines) > 1 and any(lines[1:]):
            self.errors.append(f"{where}: expected the password alone on one line, "
                               f"found {len(lines)} lines")
            return None
        return lines[0]

    def url_with_password(self, url, password, own):
        """Each URL of `url` with `password` as its user's; a URL that has a password of
        its own is an error (two passwords for one user)."""
        out = []
        for one in split_urls(url):
            parts = urlsplit(one)
            if parts.password is not None:
                self.fail("amqp", "url", own["url"], "expected no password in the URL "
                          "alongside password_file (the file gives it)")
                return url
            if not parts.username:
                self.fail("amqp", "url", own["url"], "expected a user in the URL "
                          "(amqp://user@host/) for password_file's password")
                return url
            netloc = f"{parts.username}:{quote(password, safe='')}@{parts.netloc.rpartition('@')[2]}"
            out.append(urlunsplit(parts._replace(netloc=netloc)))
        return ", ".join(out)

    def dispatcher(self):
        self.own_options("dispatcher", DISPATCHER_OPTIONS)
        chain = ["dispatcher"]   # [DEFAULT] `workers` counts plugin processes, not dispatchers
        return DispatcherSettings(processes=self.convert(chain, "workers", 1, parse_count),
                                  prefetch=self.convert(chain, "prefetch", 256, parse_prefetch),
                                  stop_timeout=self.convert(chain, "stop_timeout", 30.0, parse_seconds))

    def logging(self):
        own, chain = self.own_options("logging", LOGGING_OPTIONS), ["logging"]
        settings = LoggingSettings(
            level=self.convert(chain, "level", "info", parse_log_level),
            target=self.convert(chain, "target", "auto", parse_log_target),
            path=self.convert(chain, "path", None, parse_log_path))
        if settings.target == "file" and "path" not in own:
            self.fail("logging", "target", own["target"], "expected a path option")
        elif "path" in own and settings.target not in ("file", None):
            self.fail("logging", "path", own["path"], "expected target = file alongside it "
                      "(only the file target writes to a path)")
        return settings

    def supervisor(self):
        self.own_options("supervisor", SUPERVISOR_OPTIONS)
        return SupervisorSettings(status_dir=self.convert(["supervisor"], "status_dir",
                                                          DEFAULT_STATUS_DIR, parse_directory))

    def metrics(self, amqp):
        own, chain = self.own_options("metrics", METRICS_OPTIONS), ["metrics"]
        settings = MetricsSettings(address=self.convert(chain, "address", "127.0.0.1", parse_address),
                                   port=self.convert(chain, "port", None, parse_port),
                                   dispatcher_port=self.convert(chain, "dispatcher_port", None,
                                                                parse_port),
                                   management_url=self.convert(chain, "management_url", None,
                                                               parse_management_url))
        if settings.port is not None and settings.port == settings.dispatcher_port:
            self.fail("metrics", "dispatcher_port", own["dispatcher_port"],
                      "expected a port other than [metrics] port (the dispatcher's and the "
                      "worker pool's supervisors each listen on their own)")
        if settings.management_url and getattr(amqp, "auth", None) == "external":
            self.fail("metrics", "management_url", own["management_url"],
                      "expected no management_url with [amqp] auth = external (the API is "
                      "asked with [amqp]'s user and password, and that has none)")
        return settings

    def schedules(self, packaged):
        """[schedules]: (the schedules it defines, the names it turns off, its settings
        for the others); `packaged`: the names packages define, or None (unknown)."""
        own = self.sections.get("schedules", {})
        lines, settings = {}, {}
        for option, value in own.items():
            name, _, key = option.rpartition(".")
            if key in schedule_lines.SETTINGS and name:
                settings.setdefault(name, {})[key] = self.schedule_setting(option, key, value)
            else:
                lines[option] = value
        defined, off = [], []
        for name, value in lines.items():
            if value.strip().lower() == "off":
                off.append(self.schedule_name(name, value))
                continue
            given = {key: setting for key, setting in settings.get(name, {}).items()
                     if setting is not None}
            try:
                defined.append(schedule_lines.parse(name, value, given, "config"))
            except ValueError as exc:
                hint = f" (a setting is NAME.{', NAME.'.join(schedule_lines.SETTINGS)})" \
                    if "." in name else ""
                if value.split()[:1] and value.split()[0][-1] in ":=":
                    hint += (" (the name ends at the first ':' or '='; a schedule name is "
                             "letters, digits, '_', '.' and '-')")
                self.fail_schedule(name, value, f"{exc}{hint}")
        for name, given in settings.items():
            if name not in lines and packaged is not None and name not in packaged:
                key = next(iter(given))
                self.fail_schedule(f"{name}.{key}", own[f"{name}.{key}"],
                                   f"no schedule {name!r} is defined in [schedules] or by an "
                                   "installed package; expected the name of one")
        for name in off:
            if packaged is not None and name not in packaged:
                self.notes.append(f"{self.path}: [schedules] {name}: off, but no installed "
                                  "package defines a schedule of that name; ignored")
        rest = {name: MappingProxyType(given) for name, given in settings.items()
                if name not in lines and None not in given.values()}
        return (tuple(sorted(defined, key=lambda one: one.name)), tuple(sorted(off)),
                MappingProxyType(rest))

    def schedule_setting(self, option, key, value):
        try:
            schedule_lines.check_name(option.rpartition(".")[0])
            return schedule_lines.parse_setting(key, value)
        except ValueError as exc:
            self.fail_schedule(option, value, str(exc))
            return None

    def schedule_name(self, name, value):
        try:
            return schedule_lines.check_name(name)
        except ValueError as exc:
            self.fail_schedule(name, value, str(exc))
            return name

    def fail_schedule(self, option, value, expected):
        """fail() for [schedules], the value cut short: a line may be 64 KiB long."""
        shown = value if len(value) <= 200 else value[:200] + "..."
        self.fail("schedules", option, shown, expected)

    def warnings(self, types, claimed):
        installed = ", ".join(types) or "none"
        return tuple(f"{self.path}: [{name}] names no installed worker plugin; "
                     f"ignored (installed: {installed})" for name in self.sections
                     if name not in RESERVED_SECTIONS and name not in types
                     and name not in claimed) + tuple(self.notes)
