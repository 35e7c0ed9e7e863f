"""RabbitMQ's management HTTP API, asked for the one figure AMQP does not tell: a
queue's unacked messages ([metrics] management_url; the queue gauges' probe asks).

One GET per queue (/api/queues/<vhost>/<name>), on one kept-alive connection: a
pool serves a few queues, and a vhost may hold thousands that a listing would
bring along. Asked with [amqp]'s user and password (the user needs RabbitMQ's
`management` tag, enough for the vhosts it may use, or `monitoring`), sent in a
header, never in a URL or a message. The answers are read within bounds (parse_queue): the API is the broker's, but
what stands at that URL is whatever the config names.
"""
import base64
import http.client
import json
import ssl
from urllib.parse import quote, urlsplit

from taskqueue import redact
from taskqueue.broker import pikaparams
from taskqueue.errors import TaskqueueError
from taskqueue.printable import printable

#: Longest answer read for one queue; RabbitMQ's is a few kilobytes.
MAX_BODY = 256 * 1024
#: The field of the API's queue object that counts deliveries not yet acked.
UNACKED = "messages_unacknowledged"
#: What to check when the API refuses, by HTTP status. RabbitMQ answers a path that is
#: not its API's with 400 and an empty body.
REFUSAL_HINTS = {
    400: " (check [metrics] management_url: the API's base URL, such as http://host:15672/)",
    401: " (check [amqp] user and password, the user's tag (`management` or `monitoring`) "
         "and its permissions on [amqp] vhost)",
}
REFUSAL_HINTS[403] = REFUSAL_HINTS[401]


def unacked_counts(url, settings, queues, timeout):
    """{queue: messages delivered and not yet acked, or None when the queue does not
    exist or the broker has no figure for it yet} from the API at `url`, asked as
    the first broker of `settings` ([amqp]) would be: its vhost, user and password.
    Every socket wait is at most `timeout` seconds. TaskqueueError says why not."""
    params = pikaparams.parameters(settings)[0]
    token = f"{params.credentials.username}:{params.credentials.password}".encode()
    headers = {"Authorization": "Basic " + base64.b64encode(token).decode("ascii"),
               "Accept": "application/json"}
    parts = urlsplit(url)
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout,
                                                 context=ssl.create_default_context())
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    prefix = f"{parts.path.rstrip('/')}/api/queues/{quote(params.virtual_host, safe='')}/"
    counts = {}
    try:
        for queue in queues:
            connection.request("GET", f"{prefix}{quote(queue, safe='')}?columns=name,{UNACKED}",
                               headers=headers)
            response = connection.getresponse()
            body = response.read(MAX_BODY + 1)
            where = f"{url}: queue {queue!r}"
            if len(body) > MAX_BODY:
                raise TaskqueueError(f"{where}: an answer longer than {MAX_BODY} bytes")
            if response.status == 404:
                counts[queue] = None
            elif response.status == 200:
                counts[queue] = parse_queue(body, queue, where)
            else:
                raise TaskqueueError(refusal(where, response.status, response.reason, body))
    except (OSError, http.client.HTTPException) as exc:
        why = printable(_short(exc)) or type(exc).__name__
        raise TaskqueueError(redact.redact(f"{url}: {why}")) from None
    finally:
        connection.close()
    return counts


def refusal(where, status, reason, body):
    """What an answer of HTTP `status` other than 200 and 404 says: the status line,
    RabbitMQ's own reason from the JSON `body` when it has one ("Login failed", "Not
    management user", "User not authorised to access virtual host": the API answers
    all three with 401) and what to check."""
    text = f"{where}: HTTP {status} {printable(_short(reason))}"
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        document = None
    if isinstance(document, dict) and isinstance(document.get("reason"), str):
        text += f": {printable(_short(document['reason']))}"
    return text + REFUSAL_HINTS.get(status, "")


def parse_queue(body, queue, where="the management API"):
    """The unacked count of the API's answer `body` (bytes) about `queue`: None when the
    answer has no figure yet (a queue just declared); ValueError-free: anything else
    that is not RabbitMQ's queue object raises TaskqueueError naming `where`."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise TaskqueueError(f"{where}: the answer is not JSON") from None
    if not isinstance(document, dict):
        raise TaskqueueError(f"{where}: the answer is not a JSON object")
    if document.get("name") != queue:
        raise TaskqueueError(f"{where}: the answer is about another queue")
    value = document.get(UNACKED)
    if value is None:
        return None
    # bool is an int in Python; a float or a negative number is no count either.
    if type(value) is not int or value < 0:
        raise TaskqueueError(f"{where}: {UNACKED} is not a count")
    return value


def _short(value, limit=200):
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit] + "..."
