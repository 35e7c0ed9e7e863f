"""The Dramatiq peer: a no-op actor on the RabbitMQ broker, no retries."""
import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from record import record

dramatiq.set_broker(RabbitmqBroker(url=os.environ["BENCH_BROKER_URL"]))


@dramatiq.actor(max_retries=0)
def noop(task_id):
    record(task_id)
