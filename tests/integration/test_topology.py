"""Queue topology: quorum queues, the delivery limit, and queues declared otherwise."""
import json

import pika

from support import wait_for, recorder_config


def test_a_task_that_kills_its_worker_every_time_is_dead_lettered_after_the_delivery_limit(
        broker, start_pool, records):
    # One process: each redelivery goes to the replacement, forked after the
    # supervisor recorded how its predecessor died.
    pool = start_pool(recorder_config(records, processes=1))
    # Given a poison task (its handler makes the process exit) among healthy ones
    broker.submit("recorder", {"id": "poison", "exit": 9}, message_id="m-poison")
    for n in range(10):
        broker.submit("recorder", {"id": f"ok{n}"})
    # Then it ends in the dead-letter queue after 5 deliveries (the default limit)...
    dead = wait_for(lambda: broker.drain("taskqueue_dead"), 60, "the poison task dead-lettered")
    props, body = dead[0]
    assert props.message_id == "m-poison"
    headers = props.headers
    assert headers["x-taskqueue-reason"].startswith(
        "delivery limit 5 reached: 5 processes died handling it; last: recorder#0 pid ")
    assert headers["x-taskqueue-exit"].endswith("exit 9 during task m-poison")
    assert (headers["x-taskqueue-deaths"], headers["x-taskqueue-delivery-count"],
            headers["x-taskqueue-queue"], headers["x-taskqueue-worker-type"]) == (
        5, 5, "worker_recorder", "recorder")
    assert json.loads(body) == {"id": "poison", "exit": 9}
    assert records.ids("start").count("poison") == 5  # the poison's attempts
    # ... and every healthy task was completed by a pool that stayed up
    wait_for(lambda: len(records.ids()) == 10, 30, "the 10 healthy tasks")
    assert len(pool.wait_log(r"recorder#\d pid=\d+ exit 9", count=5)) >= 5
    assert pool.stop() == 0


def test_a_worker_queue_declared_with_other_arguments_is_explained_not_restarted_in_a_loop(
        broker, start_pool, records):
    # Given worker_recorder created by someone else as a classic queue
    broker.channel.queue_declare("worker_recorder", durable=True)
    pool = start_pool(recorder_config(records) + "\n[recorder2]\nworkers: 1\n"
                      f"record_dir: {records.path}\n")
    # The worker says which queue, what differs and how to fix it, and is quarantined
    pool.wait_log(r"recorder#0 ERROR: queue 'worker_recorder' already exists with other arguments "
                  r"than taskqueue declares \(PRECONDITION_FAILED - inequivalent arg .*\); "
                  r".*rabbitmqctl delete_queue worker_recorder")
    pool.wait_log(r"recorder#0 pid=\d+ STARTING -> QUARANTINED")
    # The dispatcher dead-letters that type's tasks with the reason and routes the others
    broker.submit("recorder", {"id": "stuck"}, message_id="m-stuck")
    broker.submit("recorder2", {"id": "fine"})
    wait_for(lambda: records.ids() == ["fine"], 20, "the other type's task done")
    dead = wait_for(lambda: broker.drain("taskqueue_dead"), 20, "the refused type's task")
    assert dead[0][0].message_id == "m-stuck"
    assert "already exists with other arguments" in dead[0][0].headers["x-taskqueue-reason"]
    assert len(pool.wait_log(r"recorder#0 pid=\d+ (?:exit|killed)")) == 1  # no restart loop
    assert pool.stop() == 0


def test_a_dead_letter_queue_an_older_taskqueue_declared_is_used_with_a_warning_saying_the_fix(
        broker, start_pool, records):
    # Given taskqueue_dead as taskqueue declared it before it gave the queue a delivery limit
    broker.channel.queue_declare("taskqueue_dead", durable=True, arguments={"x-queue-type": "quorum"})
    pool = start_pool(recorder_config(records))
    # Every component uses it as it is, and says what it risks and how to fix it
    pool.wait_log(r"recorder#0 WARNING: taskqueue_dead was declared by an older taskqueue, "
                  r"without a delivery limit: .*rabbitmqctl set_policy -p VHOST taskqueue-dead")
    pool.wait_log(r"dispatcher#0 WARNING: taskqueue_dead was declared by an older taskqueue")
    # and tasks flow, dead letters included
    broker.submit("recorder", {"id": "raises", "raise": True}, message_id="m-dead")
    broker.submit("recorder", {"id": "fine"})
    wait_for(lambda: records.ids() == ["fine"], 20, "the healthy task done")
    dead = wait_for(lambda: broker.drain("taskqueue_dead"), 20, "the raising task dead-lettered")
    assert dead[0][0].message_id == "m-dead"
    assert "QUARANTINED" not in pool.log()
    assert pool.stop() == 0


def test_classic_queues_can_be_chosen_in_the_config(broker, start_pool, records, vhost):
    pool = start_pool(recorder_config(records) + f"\n[amqp]\nhost: 127.0.0.1\nvhost: {vhost}\n"
                      "queue_type: classic\n", raw=True)
    broker.submit = None  # the test's own declares assume quorum: publish by hand
    channel = broker.connection.channel()
    channel.queue_declare("taskqueue", durable=True, arguments={
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "taskqueue_dead"})
    channel.basic_publish("", "taskqueue", b'{"worker_type": "recorder", "workitem": {"id": "c"}}',
                          pika.BasicProperties(delivery_mode=2))
    wait_for(records.all, 20, "the task done on classic queues")
    assert pool.stop() == 0


def test_brokers_are_tried_in_turn_until_one_answers(broker, start_pool, records, vhost):
    urls = (f"amqp://guest:guest@127.0.0.1:1/{vhost}, "     # nothing listens on port 1
            f"amqp://guest:guest@127.0.0.1:5672/{vhost}")
    pool = start_pool(recorder_config(records) + f"\n[amqp]\nurl: {urls}\n", raw=True)
    broker.submit("recorder", {"id": "via-second"})
    wait_for(records.all, 20, "the task done through the second broker")
    assert "exit 3" not in pool.log()  # the first broker's refusal cost no restart
    assert pool.stop() == 0
