"""pika's connection parameters and message properties, and how a failed connection is
told: what both halves share, the gevent Session (amqp.py) and the blocking connections
(blocking.py, the Client's).

No gevent, and no side effect on import: an application that imports the Client
imports this, and its process stays as it was (pika's functions and transports
pika's own, its loggers without our filters). What taskqueue's own processes change
in pika is done by amqp.py, which they import.
"""
import decimal
import logging
import time
import urllib.parse

import pika

from taskqueue.broker import failover
from taskqueue.host import tls
from taskqueue.protocol import delays, expiry, onehop, taskids

log = logging.getLogger(__name__)

#: Seconds to wait for a broker reply (open, declare, consume, close).
REPLY_TIMEOUT = 30.0
#: Persistent messages survive a broker restart (pika 1.2 has no pika.DeliveryMode).
PERSISTENT = 2


_process_route = None


def process_route():
    """The route of this process's sessions and blocking connections, when the caller
    gives none (tools, clients): a random first broker, and what failed lately."""
    global _process_route
    if _process_route is None:
        _process_route = failover.random_route()
    return _process_route


def parameters(settings):
    """pika connection parameters for each broker of an AmqpSettings, in config order."""
    if settings.url:
        candidates = [pika.URLParameters(url) for url in settings.hosts]
        own_timeouts = [_url_timeouts(url) for url in settings.hosts]
    else:
        credentials = pika.PlainCredentials(settings.user, settings.password)
        candidates = [pika.ConnectionParameters(host=host, port=settings.port,
                                                virtual_host=settings.vhost,
                                                credentials=credentials)
                      for host in settings.hosts]
        own_timeouts = [()] * len(candidates)
    for params, own in zip(candidates, own_timeouts):
        if settings.heartbeat is not None:
            params.heartbeat = settings.heartbeat
        # A host that drops packets never refuses: without these a dead node costs
        # pika's defaults (10 s to connect, 15 s for the whole handshake) per attempt.
        # (socket_timeout and stack_timeout: both in pika 1.2.0 and 1.3.2.)
        for name in ("socket_timeout", "stack_timeout"):
            if name not in own:   # a URL's own ?socket_timeout= wins
                setattr(params, name, settings.connect_timeout)
        if settings.tls and (not settings.url or params.ssl_options is not None):   # amqps:// only
            # The context kept since the config was loaded (still privileged): never pika's own.
            context = tls.context(settings.tls_ca_file, settings.tls_cert_file,
                                  settings.tls_key_file)
            params.ssl_options = pika.SSLOptions(context, settings.tls_server_name or params.host)
        if settings.auth == "external":
            params.credentials = pika.credentials.ExternalCredentials()
    return candidates


def _url_timeouts(url):
    """The connect timeouts a URL sets itself (?socket_timeout=...)."""
    return {key for key in urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
            if key in ("socket_timeout", "stack_timeout")}


def address(params):
    """`host:port` of one broker's parameters: how logs, reports and status name it."""
    return failover.address(params.host, params.port)


def ordered_parameters(settings, route, now=None):
    """parameters(settings) in the order `route` (failover.Route) tries them."""
    candidates = parameters(settings)
    now = time.monotonic() if now is None else now
    return [candidates[i] for i in route.order([address(p) for p in candidates], now)]


#: pika's own ERROR lines for one failed connection attempt: seven of them, each
#: repeating the same error; failure() says it once, naming the file at fault.
PIKA_ATTEMPT_LINES = ("Attempt to create the streaming transport failed",
                      "AMQPConnector - reporting failure",
                      "AMQP connection workflow failed",
                      "AMQPConnectionWorkflow - reporting failure",
                      "Full-stack connection workflow failed",
                      "Self-initiated stack bring-up failed",
                      "SSL do_handshake failed")


class _OneLinePerAttempt(logging.Filter):
    """Drops pika's lines for a failed connection attempt: taskqueue logs one in their place.
    In taskqueue's own processes (quiet_attempt_lines); at debug they show (logs.py
    quiets the rest of pika's connection lines there)."""

    def filter(self, record):
        if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
            return True
        return not (isinstance(record.msg, str) and record.msg.startswith(PIKA_ATTEMPT_LINES))


def quiet_attempt_lines():
    """Drop pika's lines for a failed connection attempt in this process (once): what
    taskqueue's own processes do (amqp.py, on import). Never done for an application
    that only imports the Client: its logging is its own."""
    for name in ("pika.adapters.utils.connection_workflow", "pika.adapters.base_connection",
                 "pika.adapters.utils.io_services_utils"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OneLinePerAttempt) for f in logger.filters):
            logger.addFilter(_OneLinePerAttempt())


def failure(params, exc, settings):
    """One broker's connection failure in words: a TLS one names the file or name at fault."""
    return f"{params.host}:{params.port}: {tls.explain(exc, settings, params.host) or repr(exc)}"


def short_failure(params, exc, settings):
    """The same in a few words, for status and the supervisor's memory of failures."""
    return tls.explain(exc, settings, params.host) or failover.reason(exc)


def copy_properties(props):
    """A shallow copy of message properties: copy.copy's generic protocol costs
    the dispatcher more than routing the message does."""
    out = props.__class__.__new__(props.__class__)
    out.__dict__.update(props.__dict__)
    return out


def describe(settings):
    """Where we connect, for log lines; never includes the password."""
    return ", ".join(f"{p.host}:{p.port} vhost {p.virtual_host!r}" for p in parameters(settings))


def delayed_properties(props, worker_type, seconds, now=None):
    """A copy of `props` (or new ones) for a delayed task: persistent (it must survive a
    broker restart while it waits), with the `worker_type` header the dispatcher routes
    it by and delays.DELAYED_HEADER, when it is due."""
    out = copy_properties(props) if props is not None else pika.BasicProperties()
    out.delivery_mode = PERSISTENT
    out.headers = dict(out.headers or {})
    out.headers["worker_type"] = worker_type
    out.headers[delays.DELAYED_HEADER] = delays.due(seconds, now)
    return out


def amqp_safe(value):
    """Return `value` with what pika cannot encode converted.

    Headers received from other clients may hold floats, which pika decodes
    but refuses to encode again; forwarding them would close the connection.
    A float becomes a Decimal where pika's AMQP decimal (a 32-bit scaled
    integer) can hold it, else its repr() string (timestamps, nan, 1e20).
    """
    if isinstance(value, float):
        return _float_field(value)
    if isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**63:
        return str(value)  # pika decodes huge doubles as ints it cannot encode again
    if isinstance(value, dict):
        return {k: amqp_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [amqp_safe(v) for v in value]
    return value


def _float_field(value):
    number = decimal.Decimal(repr(value))
    if number.is_finite():
        number = number.normalize()
        places = max(0, -number.as_tuple().exponent)
        if places <= 255 and -2**31 <= int(number.scaleb(places)) < 2**31:
            return number
    return repr(value)


def properties(**kwargs):
    return pika.BasicProperties(**kwargs)


def delivery(delivery_tag, exchange, routing_key, redelivered=False, consumer_tag="ctag"):
    """The `method` of a delivery as pika hands it to a consumer (Basic.Deliver):
    taskqueue.testing gives a plugin what the worker would."""
    return pika.spec.Basic.Deliver(consumer_tag, delivery_tag, redelivered, exchange,
                                   routing_key)


def onehop_properties(props, worker_type):
    """`props` (changed in place, and returned) made a one-hop task's: persistent, with
    the worker_type header the dispatcher reads when no worker queue took it."""
    props.delivery_mode = PERSISTENT
    props.headers = onehop.headers(worker_type, props.headers)
    return props


def task_properties(message_id=None, trace=None):
    """The properties of a task submitted to `taskqueue`: JSON, persistent, with a
    message id (a new one unless given: taskids.new_id, time-ordered) that is also its
    correlation id; `trace`: its trace context headers (client.trace_headers), if any."""
    message_id = message_id or taskids.new_id()
    return properties(content_type="application/json",
                                 delivery_mode=PERSISTENT,
                                 message_id=message_id, correlation_id=message_id,
                                 headers=dict(trace) if trace else None)


def steered(props, priority=None, expires=None):
    """`props` (changed in place, and returned) of a task with a `priority` (0-9, checked:
    priorities.checked) and a deadline `expires` seconds from now (checked:
    expiry.checked_seconds), when given."""
    if priority is not None:
        props.priority = priority
    if expires is not None:
        props.headers = dict(props.headers or {})
        props.headers[expiry.EXPIRES_HEADER] = expiry.deadline(expires)
    return props
