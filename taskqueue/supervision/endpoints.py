"""The supervisor's listening sockets: the status socket and the metrics port.

They are bound before the supervisor drops privileges (a socket under /run
and a port below 1024 need root) and served by greenlets that never block
the main loop: each client gets a greenlet of its own and CLIENT_TIMEOUT
seconds, after which its connection is closed whatever it did. A client that
stalls (connects, then sends nothing or half a request, or reads nothing)
costs one greenlet and one descriptor until then, never the supervising and
never another client's answer: at most MAX_CLIENTS connections are open per
endpoint, and the next one closes the oldest. A scrape takes milliseconds, so
the oldest is a staller. Every child closes them right after the fork (`forget`).
"""
import collections
import errno
import functools
import grp
import json
import logging
import os
import socket
import stat

import gevent
import gevent.socket

from taskqueue.errors import TaskqueueError
from taskqueue.host import filetrust
from taskqueue.supervision import metrics, queuegauges, snapshot

log = logging.getLogger(__name__)

#: Seconds a client has to send its request and take the whole answer.
CLIENT_TIMEOUT = 5.0
#: Connections one endpoint holds open at once; the next one closes the oldest.
MAX_CLIENTS = 16
#: The status socket's mode and group: the packages' system group may ask, others may not.
STATUS_MODE = 0o660
STATUS_GROUP = "taskqueue"


def open_all(cfg, command):
    """The endpoints the config asks of the supervisor of `command`, bound now."""
    metrics_endpoint = open_metrics(cfg, command)   # first: it may refuse the start
    return [endpoint for endpoint in (metrics_endpoint, open_status(cfg, command)) if endpoint]


def open_status(cfg, command):
    """The status endpoint of the supervisor of `command`, or None (with a warning) when
    its socket cannot be made: status is a courtesy, supervising is not."""
    path = snapshot.socket_path(cfg.supervisor.status_dir, command)
    try:
        listener = bind_status_socket(path)
    except OSError as exc:
        log.warning("status socket %s: %s; running without it (`taskqueue status` will not "
                    "see this supervisor; see [supervisor] status_dir)", path, exc.strerror or exc)
        return None
    name = f"taskqueue-{command}"

    def answer(supervisor, conn):
        conn.sendall(json.dumps(snapshot.snapshot(supervisor, name)).encode() + b"\n")
    return Endpoint(listener, answer, f"status socket {path}", path=path)


def open_metrics(cfg, command):
    """The metrics endpoint of the supervisor of `command`, None when it has no port.

    A port that cannot be had refuses the start: the operator asked for
    metrics, and a scraper would otherwise find nothing, or someone else.
    """
    settings = cfg.metrics
    port = settings.port_for(command)
    if port is None:
        return None
    option = "dispatcher_port" if command == "dispatcher" else "port"
    try:
        listener = bind_port(settings.address, port)
    except OSError as exc:
        hint = (" (another program, or another taskqueue supervisor, listens there: each "
                "needs a port of its own, see [metrics] port and dispatcher_port)"
                if exc.errno == errno.EADDRINUSE else "")
        raise TaskqueueError(f"{cfg.path}: [metrics] {option} = {port}: cannot listen on "
                             f"{settings.address} port {port}: {exc.strerror or exc}{hint}") from None
    host = f"[{settings.address}]" if ":" in settings.address else settings.address
    log.info("metrics on http://%s:%d/metrics", host, port)
    gauges = queuegauges.QueueGauges(cfg.amqp, settings.management_url)
    return Endpoint(listener, functools.partial(metrics.answer, queue_gauges=gauges),
                    f"metrics port {host}:{port}", on_stop=gauges.stop)


class Endpoint:
    """One listening socket, and `answer(supervisor, conn)` for each client."""

    def __init__(self, listener, answer, description, path=None, on_stop=None):
        self.listener = listener
        self.answer = answer
        self.description = description      # for log lines: "status socket /run/..."
        self.path = path                    # a Unix socket's file, removed by close()
        self._on_stop = on_stop             # called when it stops serving (close, forget)
        self._inode = os.stat(path).st_ino if path else None
        self._clients = collections.OrderedDict()   # greenlet -> its connection, oldest first
        self._acceptor = None

    def serve(self, supervisor):
        self._acceptor = gevent.spawn(self._accept, supervisor)

    def forget(self):
        """In a fresh child: stop serving, leaving the socket file to the supervisor."""
        self._stop()

    def detach(self):
        """In a fresh child, before its hub first runs: close our copies of the listener and
        the clients' connections (the supervisor's stay open), and have the greenlets that
        served them end when they next run, doing nothing (forget() then waits for them)."""
        if self._acceptor is not None:
            self._acceptor.kill(block=False)
        for client, conn in self._clients.items():
            client.kill(block=False)
            conn.close()
        if self._on_stop is not None:
            self._on_stop(block=False)
        self.listener.close()

    def close(self):
        """Stop serving, and remove the socket file if it is still the one we bound.

        After a privilege drop the supervisor may not be allowed to (the
        directory is root's): the service scripts remove it, and the next
        start replaces a socket nobody listens on.
        """
        self._stop()
        if self.path is None:
            return
        try:
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except OSError as exc:
            log.debug("%s: not removed: %s", self.description, exc.strerror or exc)

    def _stop(self):
        if self._acceptor is not None:
            self._acceptor.kill(block=True, timeout=1)
            self._acceptor = None
        gevent.killall(list(self._clients), block=True, timeout=1)
        self._clients.clear()
        if self._on_stop is not None:
            self._on_stop()
        self.listener.close()

    @property
    def open_connections(self):
        """How many client connections are open now (for tests and debugging)."""
        return len(self._clients)

    def _accept(self, supervisor):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError as exc:   # EMFILE and the like: keep serving once it passes
                log.warning("%s: accept failed: %s", self.description, exc.strerror or exc)
                gevent.sleep(1.0)
                continue
            if len(self._clients) >= MAX_CLIENTS:
                self._drop_oldest()
            client = gevent.spawn(self._serve_one, supervisor, conn)
            self._clients[client] = conn

    def _drop_oldest(self):
        client, conn = self._clients.popitem(last=False)
        log.debug("%s: %d clients connected: closing the oldest", self.description, MAX_CLIENTS)
        client.kill(block=False)   # its `finally` closes the connection
        conn.close()               # now: the descriptor is free before the next accept

    def _serve_one(self, supervisor, conn):
        try:
            with gevent.Timeout(CLIENT_TIMEOUT, False):   # False: a slow client is just dropped
                self.answer(supervisor, conn)
        except OSError:
            pass    # the client went away (or was dropped as the oldest): its loss
        except Exception:
            log.exception("%s: answering a client failed", self.description)
        finally:
            conn.close()
            self._clients.pop(gevent.getcurrent(), None)


def bind_status_socket(path):
    """A listening Unix socket at `path`, mode STATUS_MODE, group STATUS_GROUP if it exists.

    Creates the directory if it can; a directory that is a link, or that another user
    made or may write, is refused (filetrust.safe_directory). A socket file nobody
    answers on (left by a supervisor that is gone) is replaced; one that answers
    belongs to another running supervisor and is left alone. Raises OSError saying
    why it cannot.
    """
    filetrust.safe_directory(os.path.dirname(path))
    _remove_if_stale(path)
    listener = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # bind() creates the file with the umask applied: closed from the start, not after a chmod.
    umask = os.umask(0o777 & ~STATUS_MODE)
    try:
        _bind_in_group(listener, path)
        listener.listen(MAX_CLIENTS)   # after the group is right: no client gets in before
    except OSError:
        listener.close()
        raise
    finally:
        os.umask(umask)
    return listener


def _bind_in_group(listener, path):
    """Bind `listener` at `path`, the file in group STATUS_GROUP where it exists.

    As root (the packaged daemons), the file is made in that group: the effective gid
    is the group's for the bind alone (a gevent process: nothing else runs meanwhile),
    so no client ever finds it in root's group. Otherwise it is given to the group
    right after (a member of the group may, and nobody connects before listen()).
    """
    try:
        gid = grp.getgrnam(STATUS_GROUP).gr_gid
    except KeyError:
        listener.bind(path)   # not installed from the packages: the owner's group and root
        return
    if os.geteuid() != 0:
        listener.bind(path)
        _give_to_group(path, gid)
        return
    egid = os.getegid()
    os.setegid(gid)
    try:
        listener.bind(path)
    finally:
        os.setegid(egid)


def bind_port(address, port):
    """A listening TCP socket on address:port; raises OSError (EADDRINUSE...)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    listener = gevent.socket.socket(family, socket.SOCK_STREAM)
    try:
        # Lets a restarted supervisor bind while its predecessor's connections linger in
        # TIME_WAIT; on Linux it never lets two processes listen on one port.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address, port))
        listener.listen(MAX_CLIENTS)
    except OSError:
        listener.close()
        raise
    return listener


def _remove_if_stale(path):
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, "it exists and is not a socket; left alone")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)   # nobody listens: left by a supervisor that is gone
        return
    except socket.timeout:
        pass              # a live supervisor with a full backlog
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "another running supervisor answers on it")


def _give_to_group(path, gid):
    try:
        os.chown(path, -1, gid)
    except PermissionError:
        log.info("status socket %s stays in group %d: cannot give it to group %s",
                 path, os.getgid(), STATUS_GROUP)
