"""Bare pika consumers: each records a task's arrival exactly as the bench plugin
does ("<id> <time.time()>" appended to RECORD_DIR/<pid>.rec), then acks it.

    python bare_consumer.py URL QUEUE RECORD_DIR                       # latency baseline
    python bare_consumer.py URL QUEUE RECORD_DIR PREFETCH PROCESSES    # the broker's limit

Without PREFETCH: one BlockingConnection consumer, prefetch 1 (the latency row's
floor of one hop). With them: PROCESSES forked consumers (this process only waits
for them), each on a SelectConnection with PREFETCH, acking each message as it is
handled (no `multiple`, as a taskqueue worker acks): the leanest consumer pika
offers, for the bare-broker throughput row (m_bare.py). Runs until the bench
stops its process group (SIGTERM).
"""
import json
import os
import sys
import time

import pika


def recorder(record_dir):
    fd = os.open(os.path.join(record_dir, f"{os.getpid()}.rec"),
                 os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)

    def record(body):
        started = time.time()
        os.write(fd, f"{json.loads(body)['id']} {started:.6f}\n".encode())
    return record


def latency_consumer(url, queue, record_dir):
    record = recorder(record_dir)

    def on_message(channel, method, props, body):
        record(body)
        channel.basic_ack(method.delivery_tag)

    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=1)
    channel.basic_consume(queue, on_message)
    channel.start_consuming()


def throughput_consumer(url, queue, record_dir, prefetch):
    record = recorder(record_dir)

    def on_message(channel, method, props, body):
        record(body)
        channel.basic_ack(method.delivery_tag)

    def on_channel_open(channel):
        channel.basic_qos(prefetch_count=prefetch,
                          callback=lambda frame: channel.basic_consume(queue, on_message))

    connection = pika.SelectConnection(
        pika.URLParameters(url),
        on_open_callback=lambda conn: conn.channel(on_open_callback=on_channel_open),
        on_close_callback=lambda conn, reason: conn.ioloop.stop())
    connection.ioloop.start()


def main(argv):
    url, queue, record_dir = argv[:3]
    if len(argv) == 3:
        return latency_consumer(url, queue, record_dir)
    prefetch, processes = int(argv[3]), int(argv[4])
    children = []
    for _ in range(processes):
        pid = os.fork()
        if pid == 0:
            try:
                throughput_consumer(url, queue, record_dir, prefetch)
            finally:
                os._exit(1)   # the broker closed us: the bench sees a consumer missing
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
