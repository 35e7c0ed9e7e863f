"""Which broker of the [amqp] list a process tries first, and what failed lately.

With `[amqp] url` (or `host`) listing the nodes of a cluster, every process
would otherwise connect to the first one: all connections on one node, and
every restart trying a dead first node again. Here:

- each supervised child starts at its own node: the child's position among
  the supervisor's children, plus an offset from the host name, modulo the
  number of brokers. Deterministic, so that a pool's N children spread evenly
  (no node holds more than ceil(N / nodes)), a restarted child goes back to
  where it was, and a test can say where each one connects. The host's offset
  keeps pools of one child each on many hosts from all starting at node 0.
  Tools and clients start at a random node (nothing to keep even there).
- a broker that failed within RECENT_FAILURE seconds is tried after the
  others (the one that failed longest ago first): a dead node costs a
  restarting child nothing while another answers.

Pure: no pika, no I/O; the caller passes the time.
"""
import random
import zlib
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

#: Seconds a broker that failed stays at the end of the list.
RECENT_FAILURE = 60.0


def spread_offset(hostname):
    """A stable number per host, so that hosts do not all start at the same broker."""
    return zlib.crc32(hostname.encode("utf-8", "replace"))


def order(addresses, first, failed, now, window=RECENT_FAILURE):
    """The indices of `addresses` ("host:port", in config order) in the order to try
    them: rotated to start at index `first` (modulo their number), those that failed
    less than `window` seconds before `now` (`failed`: {address: monotonic time})
    moved to the end, the one that failed longest ago first. When the node at `first`
    failed, the others are tried starting at one chosen by first // count, so the
    children that shared the failed node spread over the rest."""
    count = len(addresses)
    if not count:
        return []
    rotated = [(first + step) % count for step in range(count)]
    recent = {address: when for address, when in failed.items() if 0 <= now - when < window}
    fresh = [i for i in rotated if addresses[i] not in recent]
    if fresh and addresses[rotated[0]] in recent:
        # Its own node failed: the children that started there go on to the others
        # in turn (by their round, first // count), not all to the next one.
        shift = (first // count) % len(fresh)
        fresh = fresh[shift:] + fresh[:shift]
    stale = sorted((i for i in rotated if addresses[i] in recent),
                   key=lambda i: recent[addresses[i]])   # stable: ties keep the rotation
    return fresh + stale


@dataclass
class Route:
    """One process's way to the brokers: where it starts, what failed lately, and
    whom it tells (`report(event, detail)`: a supervised child's report pipe)."""
    first: int = 0
    failed: Dict[str, float] = field(default_factory=dict)
    report: Optional[Callable[[str, str], None]] = None

    def order(self, addresses, now):
        return order(addresses, self.first, self.failed, now)

    def attempt_failed(self, address, reason, now):
        self.failed[address] = now
        self._tell("unreachable", f"{address} {reason}")

    def connected(self, address, server):
        self.failed.pop(address, None)
        self._tell("broker", f"{address} {server}".rstrip())

    def lost(self, address, reason, addresses, now):
        """Remember that `address` was lost; return the broker the next attempt
        starts at (the one a restarted child of this slot tries first)."""
        self.failed[address] = now
        self._tell("lost", f"{address} {reason}")
        return addresses[self.order(addresses, now)[0]] if addresses else None

    def _tell(self, event, detail):
        if self.report is not None:
            self.report(event, detail)


def random_route():
    """For tools and clients: start anywhere, so that many of them spread."""
    return Route(first=random.randrange(1 << 16))


def address(host, port):
    """`host:port`, `[::1]:5672` for an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def server_summary(properties):
    """What a broker says of itself on connecting (AMQP server properties), in a few
    words: `RabbitMQ 3.10.8, cluster rabbit@vm`. RabbitMQ does not name the node
    a connection reached; its cluster name defaults to the first node's name."""
    def text(key):
        value = (properties or {}).get(key)
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    product = " ".join(str(word) for word in (text("product"), text("version")) if word)
    cluster = text("cluster_name")
    return ", ".join(part for part in (product, cluster and f"cluster {cluster}") if part)


#: Words for the ways a connection attempt fails or a connection ends, by what
#: pika's exception (or the socket error inside it) says: the first that matches.
_ENDINGS = (("AMQPConnectorStackTimeout", "no answer to the AMQP handshake"),
            ("TCP connection attempt timed out", "no answer to the TCP connect"),
            ("ConnectionRefusedError", "connection refused"),
            ("ConnectionResetError", "connection reset"),
            ("BrokenPipeError", "connection reset"),
            ("ProbableAuthenticationError", "authentication refused (user, password)"),
            ("ProbableAccessDeniedError", "access refused (vhost, permissions)"),
            ("AMQPHeartbeatTimeout", "missed heartbeats"),
            ("gaierror", "cannot resolve the host name"),
            ("TimeoutError", "timed out"),
            ("EOF", "the broker closed the socket"))


def reason(close_reason):
    """Why a connection ended or an attempt failed, in a few words: `connection reset`,
    `no answer to the TCP connect`, `closed by the broker: 320 CONNECTION_FORCED - ...`."""
    code = getattr(close_reason, "reply_code", None)
    text = getattr(close_reason, "reply_text", None)
    kind = type(close_reason).__name__
    if code is not None and text is not None:
        who = "channel closed" if "Channel" in kind else "closed"
        by = " by the broker" if "ByBroker" in kind else ""
        return f"{who}{by}: {code} {text}"
    words = f"{kind} {close_reason!r}"
    found = next((said for key, said in _ENDINGS if key in words), None)
    if found:
        return found
    return str(close_reason) or kind
