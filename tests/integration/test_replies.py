"""reply_to on real workers: a reply goes to a reply queue (Client.call's direct reply-to,
a server-named queue, what reply_queues adds), never into a queue a submitter names."""
import json
import subprocess

from support import BROKER_HOST, TASKQUEUE, wait_for
from taskqueue.client import Client
from taskqueue.host.config import AmqpSettings
from taskqueue.protocol.topology import queue_arguments

ECHO = "[DEFAULT]\nworkers: 0\n\n[echo]\nworkers: 1\n"
#: What a submitter could make echo (or any plugin replying) write into with its account.
HIJACKED = ["taskqueue", "worker_recorder", "taskqueue_dead", "results"]


def test_echo_replies_only_to_reply_queues_and_acks_every_task(broker, start_pool, vhost):
    # Given echo, as the pool runs it (no dispatcher: whatever lands in taskqueue stays there)
    pool = start_pool(ECHO, command="workerpool")
    wait_for(lambda: broker.counts("worker_echo")[1] == 1, 20, "echo consuming")
    broker.channel.queue_declare("results", durable=True)   # a queue of the application's
    broker.channel.queue_declare("worker_recorder", durable=True,
                                 arguments=queue_arguments("worker_recorder", AmqpSettings()))
    try:
        _refused_and_served(broker, pool, vhost)
    finally:
        broker.channel.queue_delete("results")
    assert pool.stop() == 0


def _refused_and_served(broker, pool, vhost):
    # When tasks name taskqueue's queues (and one the config does not allow) as reply_to
    for queue in HIJACKED:
        broker.submit_one_hop("echo", {"into": queue}, message_id=f"m-{queue}", reply_to=queue,
                              correlation_id=f"c-{queue}")
    # Then each is refused with a warning naming the task and its reply_to
    for queue in HIJACKED:
        pool.wait_log(rf"task=m-{queue} WARNING: reply to task m-{queue} \(delivery \d+\) not "
                      rf"sent: its reply_to '{queue}' is not a reply queue")
    # and nothing was published into those queues, and every task was acked
    assert {queue: broker.counts(queue)[0] for queue in HIJACKED} == dict.fromkeys(HIJACKED, 0)
    wait_for(lambda: broker.counts("worker_echo") == (0, 1), 10, "worker_echo emptied")
    # while a server-named queue gets its reply
    own = broker.channel.queue_declare("", exclusive=True).method.queue
    assert own.startswith("amq.gen-")
    broker.submit_one_hop("echo", {"into": "own"}, message_id="m-own", reply_to=own,
                          correlation_id="c-own")
    got = wait_for(lambda: broker.drain(own), 15, "the reply in the server-named queue")
    assert [(props.correlation_id, json.loads(body)) for props, body in got] == [
        ("c-own", {"into": "own"})]
    # and so does Client.call (direct reply-to), and `taskqueue submit --wait`
    with Client(host=BROKER_HOST, vhost=vhost) as client:
        assert json.loads(client.call("echo", {"x": 1}, timeout=10)) == {"x": 1}
    out = subprocess.run([TASKQUEUE, "submit", "--wait", "--timeout", "10", "--config",
                          pool.config_path, "echo", '{"y": 2}'], capture_output=True, text=True,
                         timeout=60)
    assert (out.returncode, json.loads(out.stdout)) == (0, {"y": 2}), out.stderr


def test_reply_queues_lets_a_group_reply_into_queues_it_names(broker, start_pool):
    pool = start_pool(ECHO + "reply_queues: results, results_*\n", command="workerpool")
    wait_for(lambda: broker.counts("worker_echo")[1] == 1, 20, "echo consuming")
    for queue in ("results", "results_7"):
        broker.channel.queue_declare(queue, durable=True)
        try:
            broker.submit_one_hop("echo", {"to": queue}, reply_to=queue, correlation_id="c")
            got = wait_for(lambda: broker.drain(queue), 15, f"the reply in {queue}")
            assert [json.loads(body) for _, body in got] == [{"to": queue}]
        finally:
            broker.channel.queue_delete(queue)
    assert pool.stop() == 0
