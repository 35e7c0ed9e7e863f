"""What a running supervisor exposes, and to whom.

The status socket answers the `taskqueue` group and root only: tested by
connecting as created system users, one in the group and one outside it.
The metrics port serves GET /metrics and nothing else: every other request
gets an HTTP error and a closed connection, and the supervisor runs on.
"""
import grp
import os
import pwd
import socket
import stat
import subprocess
import sys

import pytest

from nodes import free_port
from support import recorder_config, system_users, wait_for

STATUS_GROUP = "taskqueue"
OUTSIDER = "tqtest-outsider"
INSIDER = "tqtest-insider"

#: Run as another user: connect to the socket, print what happened.
CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print("refused", type(exc).__name__)
else:
    print("answered", s.makefile("rb").readline()[:40])
"""


@pytest.fixture(scope="module")
def users():
    """OUTSIDER (not in STATUS_GROUP) and INSIDER (in it); what is created is removed."""
    with system_users(users=(OUTSIDER, INSIDER), groups=(STATUS_GROUP,),
                      members=((INSIDER, STATUS_GROUP),)):
        assert OUTSIDER not in grp.getgrnam(STATUS_GROUP).gr_mem
        yield


def connect_as(user, path):
    pw = pwd.getpwnam(user)
    done = subprocess.run([sys.executable, "-c", CONNECT, path], capture_output=True, text=True,
                          timeout=30, user=pw.pw_uid, group=pw.pw_gid,
                          extra_groups=os.getgrouplist(user, pw.pw_gid), cwd="/")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_status_socket_answers_its_group_and_refuses_a_user_outside_it(
        users, broker, start_pool, records, status_dir):
    # Given a running pool (as root, as the packages' init scripts start it)
    pool = start_pool(recorder_config(records))
    path = os.path.join(status_dir, "taskqueue-run.sock")
    wait_for(lambda: os.path.exists(path), 15, "the status socket")
    pool.wait_log(r"recorder#0 pid=\d+ STARTING -> RUNNING")
    # its socket is 0660 and the taskqueue group's, in a directory anyone may cross
    mode = os.stat(path)
    assert stat.S_IMODE(mode.st_mode) == 0o660
    assert mode.st_gid == grp.getgrnam(STATUS_GROUP).gr_gid
    assert os.stat(status_dir).st_mode & 0o005 == 0o005
    # Then a member of the group is answered: the refusal below is the socket's, not the path's
    assert connect_as(INSIDER, path).startswith("answered b'{")
    # and a user outside it is refused
    assert connect_as(OUTSIDER, path) == "refused PermissionError"
    # and so is `taskqueue status` run by that user
    pw = pwd.getpwnam(OUTSIDER)
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "taskqueue"), "status",
                          "--config", pool.config_path], capture_output=True, text=True,
                         timeout=60, user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], cwd="/")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "permission denied: ask as root or as a member of group taskqueue" in out.stdout
    assert pool.stop() == 0


def ask(port, request, close_write=True):
    """Send `request` raw; the whole response, read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        if close_write:
            conn.shutdown(socket.SHUT_WR)
        return b"".join(iter(lambda: conn.recv(65536), b""))   # b"" only once it is closed


#: Requests other than GET /metrics, and what each gets.
NOT_SERVED = [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"404 Not Found"),
    (b"GET /status HTTP/1.1\r\n\r\n", b"404 Not Found"),
    (b"GET /metrics/../../etc/passwd HTTP/1.1\r\n\r\n", b"404 Not Found"),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", b"405 Method Not Allowed"),
    (b"DELETE /metrics HTTP/1.1\r\n\r\n", b"405 Method Not Allowed"),
    # A body the endpoint never reads: answered all the same, not reset.
    (b"PUT /metrics HTTP/1.1\r\nContent-Length: 300000\r\n\r\n" + b"x" * 300000,
     b"405 Method Not Allowed"),
    (b"OPTIONS * HTTP/1.1\r\n\r\n", b"405 Method Not Allowed"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n", b"400 Bad Request"),   # a TLS hello
    (b"garbage\r\n\r\n", b"400 Bad Request"),
    # Oversized: answered at once, while the client still has its end open.
    (b"GET /metrics HTTP/1.1\r\nX-Long: " + b"a" * 100000 + b"\r\n\r\n",
     b"431 Request Header Fields Too Large"),
    (b"\xff" * 20000, b"431 Request Header Fields Too Large"),
]


def test_metrics_port_serves_get_metrics_only_and_closes_on_anything_else(
        broker, start_pool, records):
    # Given a pool serving metrics
    port = free_port()
    pool = start_pool(recorder_config(records) + f"\n[metrics]\nport: {port}\n")
    pool.wait_log(rf"metrics on http://127.0.0.1:{port}/metrics")
    for request, status in NOT_SERVED:
        # When a client sends something other than GET /metrics
        response = ask(port, request, close_write=b"431" not in status)
        # Then it gets an HTTP error, not the metrics, and the connection closed (ask returned)
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 " + status + b"\r\n"), (request[:40], response[:200])
        assert b"Connection: close" in head and b"taskqueue_" not in body
    # A client that sends half a request and hangs up gets nothing, and costs nothing
    assert ask(port, b"GET /metr") == b""
    # and the supervisor runs on, serving the metrics and supervising
    metrics = ask(port, b"GET /metrics HTTP/1.0\r\n\r\n")
    assert metrics.startswith(b"HTTP/1.1 200 OK\r\n") and b"taskqueue_children" in metrics
    broker.submit("recorder", {"id": "after"})
    wait_for(lambda: records.ids() == ["after"], 15, "a task done after all that")
    assert "Traceback" not in pool.log()
    assert pool.stop() == 0
