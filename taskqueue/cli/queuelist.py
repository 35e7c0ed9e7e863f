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
    params = pikaparams.parameters(settings)
    local = [p for p in params if is_local(p.host)]
    if not local:
        raise Unlisted(f"the broker ({', '.join(p.host for p in params)}) is not on this host, "
                       f"and {RABBITMQCTL} lists only the queues of a node on this host")
    command = shutil.which(RABBITMQCTL)
    if command is None:
        raise Unlisted(f"{RABBITMQCTL} is not on PATH")
    try:
        out = subprocess.run(
            [command, "-q", "list_queues", "-p", local[0].virtual_host, "--formatter", "json",
             "name"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Unlisted(f"{RABBITMQCTL} did not answer within {timeout:g}s") from None
    except OSError as exc:
        raise Unlisted(f"cannot run {command}: {exc.strerror or exc}") from None
    if out.returncode != 0:
        raise Unlisted(f"{RABBITMQCTL} failed (exit {out.returncode}): "
                       f"{_first_line(out.stderr or out.stdout)}")
    return parse_listing(out.stdout)


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
