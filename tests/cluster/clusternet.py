"""Hosts in network namespaces: a private switch, veth links, and reaching into them.

The switch is a namespace of its own holding the bridges, so no address of the
test's subnets ever appears in the machine's own namespace: traffic stays
between the namespaces the test made. The test process itself reaches a
namespace per thread (setns(2) on the calling thread only; a socket stays in
the namespace it was made in), so its own AMQP clients run in a "client" host.
"""
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def usable():
    """None when namespaces can be made here, else why not."""
    if os.getuid() != 0:
        return "network namespaces need root"
    try:
        done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns` is unavailable: {exc}"
    if done.returncode:
        return f"`ip netns list` failed: {done.stderr.strip()}"
    return None


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextlib.contextmanager
def inside(netns):
    """Run the block's network calls in `netns` (None: where we are)."""
    if netns is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)


def listening(host, port, netns=None):
    with inside(netns):
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            return False


def ip(*args, check=True):
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


class Network:
    """Namespaces on private bridges. Everything made is recorded and removed by
    remove(), which kills by pid whatever still runs in them first."""

    def __init__(self, tag):
        self.tag = tag                  # short and unique: interface names have 15 bytes
        self.switch = f"tq{tag}sw"
        self.hosts = []                 # namespaces made, the switch included
        self.bridges = set()
        try:
            self._add_namespace(self.switch)
        except Exception:
            self.remove()
            raise

    def _add_namespace(self, name):
        ip("netns", "add", name)
        self.hosts.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def bridge(self, net):
        name = f"br{net}"
        if name not in self.bridges:
            ip("-n", self.switch, "link", "add", name, "type", "bridge")
            ip("-n", self.switch, "link", "set", name, "up")
            self.bridges.add(name)
        return name

    def host(self, name):
        ns = f"tq{self.tag}{name}"
        self._add_namespace(ns)
        return ns

    def link(self, ns, net, address, dev):
        """A veth from host `ns` (device `dev`, `address`/24) to the bridge of `net`."""
        bridge = self.bridge(net)
        peer = f"{ns[len('tq') + len(self.tag):]}-{dev}"[:15]   # unique in the switch
        ip("link", "add", dev, "netns", ns, "type", "veth", "peer", "name", peer,
           "netns", self.switch)
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", dev)
        ip("-n", ns, "link", "set", dev, "up")
        ip("-n", self.switch, "link", "set", peer, "master", bridge)
        ip("-n", self.switch, "link", "set", peer, "up")

    def set_link(self, ns, dev, state):
        ip("-n", ns, "link", "set", dev, state)

    def pids(self, ns):
        out = ip("netns", "pids", ns, check=False)
        return [int(p) for p in out.split()]

    def remove(self):
        for ns in self.hosts:   # epmd and anything a failed test left behind
            for pid in self.pids(ns):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        while any(self.pids(ns) for ns in self.hosts) and time.monotonic() < deadline:
            time.sleep(0.1)
        for ns in reversed(self.hosts):   # deleting a namespace deletes its links and bridges
            ip("netns", "delete", ns, check=False)
        self.hosts = []
