"""The Client is a good guest in an application (issue 21): importing and using it
leaves the host process as it was (no gevent, pika's decoders and transports pika's
own, no filter on the host's loggers), and it uses the queues of a vhost as they are
declared, whatever its own queue_type. Real broker, a real interpreter of its own."""
import json
import subprocess
import sys
import textwrap

import pytest

from support import BROKER_HOST, declare_one_hop, deep_table, stand_in_echo_worker, wait_for
from taskqueue.client import Client
from taskqueue.host.config import AmqpSettings
from taskqueue.protocol import delays
from taskqueue.protocol.topology import queue_arguments

pytestmark = pytest.mark.timeout(120)

#: Run in an interpreter of its own: imports taskqueue.client, submits, submit_many and
#: call, then prints what it changed in the process (a JSON list of sentences).
GUEST = textwrap.dedent("""
    import json, logging, sys
    import pika.data, pika.spec
    from pika.adapters.utils import io_services_utils as io

    def loggers():
        names = [""] + [n for n in logging.root.manager.loggerDict if n.startswith("pika")]
        return {n: list(logging.getLogger(n).filters) for n in names}

    def transports():
        return {(c.__name__, k): v for c in (io._AsyncTransportBase,
                io._AsyncPlaintextTransport, io._AsyncSSLTransport) for k, v in vars(c).items()}
    decoders = (pika.data.decode_table, pika.data.decode_value, pika.spec.BasicProperties.decode)
    filters, classes = loggers(), transports()

    import taskqueue.client
    from taskqueue.client import Client
    host, port, vhost = sys.argv[1:4]
    with Client(host=host, port=int(port), vhost=vhost) as client:
        client.submit("guest", {"n": 1})
        client.submit_many("guest", [{"n": 2}, {"n": 3}])
        try:
            client.call("guest", {"n": 4}, timeout=0.5)
        except TimeoutError:
            pass
    changed = sorted(m for m in sys.modules if m == "gevent" or m.startswith("gevent."))[:3]
    if (pika.data.decode_table, pika.data.decode_value,
            pika.spec.BasicProperties.decode) != decoders:
        changed.append("pika's decoders replaced")
    changed += [f"{c}.{k} replaced" for (c, k), v in transports().items()
                if classes.get((c, k)) is not v]
    after = loggers()
    changed += [f"filter on logger {n!r}" for n in after if after[n] != filters.get(n, [])]
    print(json.dumps(changed))
""")


def test_importing_and_using_the_client_leaves_gevent_pika_and_logging_as_they_were(
        broker, vhost, amqp_port):
    # Given an application's interpreter, when it imports taskqueue.client and submits
    done = subprocess.run([sys.executable, "-c", GUEST, BROKER_HOST, str(amqp_port), vhost],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # Then the tasks are in the broker, and nothing of the process was changed
    assert json.loads(done.stdout.splitlines()[-1]) == []
    wait_for(lambda: broker.counts("taskqueue")[0] == 4, 10, "the 4 tasks in taskqueue")


@pytest.mark.parametrize("existing, wanted", [("classic", "quorum"), ("quorum", "classic")])
def test_a_client_uses_taskqueue_as_it_was_declared_whatever_its_own_queue_type(
        broker, vhost, amqp_port, existing, wanted):
    # Given taskqueue declared by a pool configured with the other queue type
    broker.settings = AmqpSettings(queue_type=existing)
    declare_one_hop(broker.channel, broker.settings)
    declare_delay_chain(broker.channel, broker.settings)
    # When a Client configured with `wanted` submits, one by one, many, and delayed
    with Client(host=BROKER_HOST, port=amqp_port, vhost=vhost, queue_type=wanted) as client:
        ids = [client.submit("recorder", {"n": 1}), *client.submit_many("recorder", [{"n": 2}]),
               client.submit("recorder", {"n": 3}, delay=1)]
    # Then each task is delivered, through the queue as it was
    tasks = []
    wait_for(lambda: tasks.extend(m[0].message_id for m in broker.drain("taskqueue"))
             or len(tasks) >= 3, 15, "the 3 tasks")
    assert sorted(tasks) == sorted(ids)
    arguments = queue_arguments("taskqueue", broker.settings)
    probe = broker.channel.queue_declare("taskqueue", durable=True, arguments=arguments)
    assert probe.method.queue == "taskqueue"    # still of its type: an equal declare is taken


def declare_delay_chain(channel, settings):
    """The delay chain (delays.py) as a publisher with `settings` declares it."""
    plan = delays.declarations(settings, "taskqueue", queue_arguments("taskqueue", settings))
    for name, kind in plan.exchanges:
        channel.exchange_declare(name, exchange_type=kind, durable=True)
    for name, arguments in plan.queues:
        channel.queue_declare(name, durable=True, arguments=arguments)
    for name, source, pattern in plan.queue_bindings:
        channel.queue_bind(name, source, routing_key=pattern)
    for destination, source, pattern in plan.exchange_bindings:
        channel.exchange_bind(destination, source, routing_key=pattern)


#: An application's interpreter calling echo twice: prints each call's answer or error.
CALLER = textwrap.dedent("""
    import sys
    from taskqueue.client import Client
    host, port, vhost = sys.argv[1:4]
    with Client(host=host, port=int(port), vhost=vhost) as client:
        for n in (1, 2):
            try:
                print(repr(client.call("echo", {"x": n}, timeout=20)))
            except Exception as exc:
                print(type(exc).__name__, exc)
""")


def test_a_reply_whose_headers_pika_cannot_decode_fails_that_call_and_not_the_next(
        broker, vhost, amqp_port):
    # Given a stand-in worker whose first reply has headers nested 700 deep (pika, as
    # shipped, raises RecursionError reading them), its second a plain one
    with stand_in_echo_worker(broker.port, vhost,
                              lambda n: deep_table(700 if n == 0 else 1)) as answered:
        # When an application (pika as shipped) calls it twice
        done = subprocess.run([sys.executable, "-c", CALLER, BROKER_HOST, str(amqp_port), vhost],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        first, second = done.stdout.splitlines()[-2:]
        # Then the first call fails saying what was wrong, and the next gets its answer
        assert first.startswith("UndecodableHeaders waiting for the reply to task "), first
        assert "pika cannot decode a message the broker sent" in first
        assert "RecursionError" in first and "that connection is closed" in first
        assert second == "b'the answer'"
        assert len(answered) == 2
