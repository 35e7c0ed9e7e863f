"""The Celery peer: a no-op task, acked late, one prefetched task per process, no results;
on classic queues, or on quorum queues (BENCH_QUEUE_TYPE=quorum, Celery 5.5+)."""
import os

from celery import Celery

from record import record

app = Celery("bench", broker=os.environ["BENCH_BROKER_URL"])
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, task_ignore_result=True,
                result_backend=None, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False)
if os.environ.get("BENCH_QUEUE_TYPE") == "quorum":
    # Declares the `celery` queue with x-queue-type quorum (and so, as taskqueue's
    # quorum rows, replicated and fsynced); messages are persistent either way.
    app.conf.task_default_queue_type = "quorum"


@app.task(name="noop")
def noop(task_id):
    record(task_id)
