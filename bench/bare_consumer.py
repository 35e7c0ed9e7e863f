"""The latency baseline's consumer: bare pika, prefetch 1, records each task's
arrival exactly as the bench plugin does, then acks.

    python bare_consumer.py URL QUEUE RECORD_DIR
"""
import json
import os
import sys
import time

import pika


def main(url, queue, record_dir):
    fd = os.open(os.path.join(record_dir, f"{os.getpid()}.rec"),
                 os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)

    def on_message(channel, method, props, body):
        started = time.time()
        os.write(fd, f"{json.loads(body)['id']} {started:.6f}\n".encode())
        channel.basic_ack(method.delivery_tag)

    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=1)
    channel.basic_consume(queue, on_message)
    channel.start_consuming()  # until the bench stops us (SIGTERM)


if __name__ == "__main__":
    main(*sys.argv[1:])
