"""Every queue of the broker's vhost, for `taskqueue status`: AMQP cannot list them.

A passive declare counts a queue whose name one knows; what status knows
is the config and the running groups. A task submitted for a type that no
host runs waits in a `worker_<type>` queue nobody names. Three ways could
list it, and this module uses the one that needs nothing new:

- `rabbitmqctl list_queues`, used here: on the broker's host, as root, it
  lists every queue of a vhost. Every RabbitMQ
  install has it; it needs no plugin, no extra credentials and no change to
  the broker. It asks the node on this host only, hence only when the
  broker taskqueue uses is on this host (a loopback or local address).
- RabbitMQ's management HTTP API would work from any host, but its plugin
  is often not enabled (it is not on a Debian install by default) and it
  needs a user with its management tag: not something status may require.
- What taskqueue records itself (the queues the dispatchers declared) would
  miss queues filled by clients that publish to `worker_<type>` directly,
  and those of dispatchers on other hosts.

Only the names are taken from rabbitmqctl: its counts of a quorum queue
are statistics that lag by seconds (a task just routed shows as 0 ready),
so status counts every queue by a passive declare, exactly. When rabbitmqctl
cannot answer, status says why and judges what it knows.
"""
import ipaddress
import json
import shutil
import socket
import subprocess
import time

from taskqueue.broker import pikaparams
from taskqueue.errors import Unlisted

#: RabbitMQ's command line tool, looked up on PATH (Debian: /usr/sbin, root's PATH).
RABBITMQCTL = "rabbitmqctl"
#: Where listing is not possible, status says so and adds this.
WHERE_IT_WORKS = "as root on the broker's host, status lists them all"
#: Longest piece of rabbitmqctl's complaint quoted in a reason.
SHOWN = 200


def list_queues(settings, timeout):
    """The names of every queue in the vhost of `settings`, from rabbitmqctl (a set);
    Unlisted saying why when it cannot tell."""
    return Listing(settings, timeout).names()


class Listing:
    """A `rabbitmqctl list_queues` started at once and read later: most of its second
    is the Erlang VM starting, which `taskqueue status` spends asking the broker and
    the supervisors meanwhile. names() waits for it (`timeout` from the start)."""

    def __init__(self, settings, timeout):
        self.timeout = timeout
        self._process = self._problem = None
        self._started = time.monotonic()
        params = pikaparams.parameters(settings)
        local = [p for p in params if is_local(p.host)]
        command = shutil.which(RABBITMQCTL)
        if not local:
            self._problem = (f"the broker ({', '.join(p.host for p in params)}) is not on this "
                             f"host, and {RABBITMQCTL} lists only the queues of a node on this "
                             "host")
        elif command is None:
            self._problem = f"{RABBITMQCTL} is not on PATH"
        else:
            try:
                self._process = subprocess.Popen(
                    [command, "-q", "list_queues", "-p", local[0].virtual_host, "--formatter",
                     "json", "name"],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    text=True)
            except OSError as exc:
                self._problem = f"cannot run {command}: {exc.strerror or exc}"

    def names(self):
        """The set of names listed; Unlisted saying why there is none."""
        if self._problem:
            raise Unlisted(self._problem)
        left = max(0.0, self._started + self.timeout - time.monotonic())
        try:
            stdout, stderr = self._process.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            self.abandon()
            raise Unlisted(f"{RABBITMQCTL} did not answer within {self.timeout:g}s") from None
        if self._process.returncode != 0:
            raise Unlisted(f"{RABBITMQCTL} failed (exit {self._process.returncode}): "
                           f"{_first_line(stderr or stdout)}")
        return parse_listing(stdout)

    def abandon(self):
        """Stop it if it still runs (status no longer needs it) and reap it."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.communicate()


def parse_listing(text):
    """The set of names in `rabbitmqctl list_queues --formatter json name`'s answer
    (JSON: names may hold any character); Unlisted if it is not that."""
    try:
        names = {row["name"] for row in json.loads(text)}
        if all(isinstance(name, str) for name in names):
            return names
    except (ValueError, TypeError, KeyError):
        pass
    raise Unlisted(f"{RABBITMQCTL} answered something else than a list of queues: "
                   f"{_first_line(text)!r}")


def _first_line(text):
    line = next((line.strip() for line in text.splitlines() if line.strip()), "no output")
    return line if len(line) <= SHOWN else line[:SHOWN] + "..."


def is_local(host):
    """True when `host` names this machine: a loopback address, or one it can bind."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    for family, _, _, _, address in infos:
        if ipaddress.ip_address(address[0].partition("%")[0]).is_loopback:
            return True
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.bind((address[0], 0, *address[2:]))   # only this host's addresses bind
            return True
        except OSError:
            continue
    return False


def contradiction(listed, counts):
    """Why the listing is not of the broker status asked, or None: a queue the broker
    has (by a passive declare, `counts`) that the listing lacks means rabbitmqctl
    answered for another node or vhost (e.g. a second node on another port)."""
    missing = sorted(queue for queue, count in counts.items() if count is not None
                     and queue not in listed)
    if missing:
        return (f"{RABBITMQCTL} answers for another node than the broker: it does not list "
                f"{', '.join(missing)}")
    return None
