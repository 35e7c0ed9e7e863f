"""The Celery peer: a no-op task, acked late, one prefetched task per process, no results."""
import os

from celery import Celery

from record import record

app = Celery("bench", broker=os.environ["BENCH_BROKER_URL"])
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, task_ignore_result=True,
                result_backend=None, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False)


@app.task(name="noop")
def noop(task_id):
    record(task_id)
