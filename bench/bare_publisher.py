"""The broker's limit, publishing side: bare pika, persistent, every message confirmed,
as many in flight as a window allows (the way taskqueue's Client.submit_many publishes).

    python bare_publisher.py URL EXCHANGE ROUTING_KEY COUNT PREFIX [BODY_BYTES [WORKER_TYPE]]

Publishes COUNT messages to EXCHANGE with ROUTING_KEY (mandatory: an unroutable
one is an error), each with its id as message id (as taskqueue's clients send every
task: a worker names a task by it, and digests the body only without one). A body
is the workitem `{"id": "<PREFIX><n>"}`, padded with a
"pad" string to BODY_BYTES when that is given; with WORKER_TYPE it goes as taskqueue's
one-hop path wants it (the type in the `worker_type` header, bench/onehop.py), with
WORKER_TYPE `envelope:<type>` as the dispatcher path's envelope to the queue it names.
At most WINDOW messages, and WINDOW_BYTES of bodies, wait for their confirm.

Speaks send.py's protocol to the bench: once the broker confirmed the last message,
prints {"start": ..., "end": ...} (time.time() at the first publish and at the last
confirm), then waits until stdin closes. Exits 1 if a message was returned or nacked.
"""
import json
import sys
import time

import pika

#: Messages in flight (published, not yet confirmed): deep enough that the broker,
#: not the round trip, bounds the rate (Client.submit_many allows 2 000).
WINDOW = 1000
#: Bytes of bodies in flight: bounds what pika and the broker buffer for big bodies.
WINDOW_BYTES = 64 * 2**20


def make_body(task_id, size, envelope_type):
    workitem = {"id": task_id}
    if envelope_type:
        return json.dumps({"worker_type": envelope_type, "workitem": workitem}).encode()
    body = json.dumps(workitem).encode()
    if size and size > len(body):
        # {"id": "...", "pad": "xxx"}: the padding string takes the rest.
        pad = size - len(body) - len(', "pad": ""')
        body = body[:-1] + b', "pad": "' + b"x" * max(0, pad) + b'"}'
    return body


class Publisher:
    """Publishes on a confirm channel, refilling the window as confirms come."""

    def __init__(self, url, exchange, routing_key, count, prefix, size, worker_type):
        self.exchange, self.routing_key, self.count = exchange, routing_key, count
        self.prefix, self.size = prefix, size
        envelope = worker_type and worker_type.startswith("envelope:")
        self.envelope_type = worker_type.split(":", 1)[1] if envelope else None
        self.headers = {"worker_type": worker_type} if worker_type and not envelope else None
        self.window = max(1, min(WINDOW, WINDOW_BYTES // max(1, size or 1)))
        self.published = 0
        self.confirmed_upto = 0      # every tag up to this one is confirmed
        self.confirmed_above = set()  # tags above it confirmed one by one
        self.failed = []
        self.start = self.end = None
        self.channel = None
        self.connection = pika.SelectConnection(
            pika.URLParameters(url), on_open_callback=self.on_connection_open,
            on_open_error_callback=lambda conn, err: self.fail(f"connect: {err!r}"),
            on_close_callback=lambda conn, reason: conn.ioloop.stop())

    def run(self):
        self.connection.ioloop.start()
        return self

    def fail(self, why):
        self.failed.append(why)
        if self.connection.is_open:
            self.connection.close()
        else:
            self.connection.ioloop.stop()

    def on_connection_open(self, connection):
        connection.channel(on_open_callback=self.on_channel_open)

    def on_channel_open(self, channel):
        self.channel = channel
        channel.add_on_return_callback(
            lambda ch, method, props, body: self.fail(f"returned: {method.reply_text}"))
        channel.confirm_delivery(self.on_confirm, callback=lambda frame: self.fill())

    def in_flight(self):
        return self.published - self.confirmed_upto - len(self.confirmed_above)

    def fill(self):
        if self.start is None:
            self.start = time.time()
        while self.published < self.count and self.in_flight() < self.window:
            task_id = f"{self.prefix}{self.published}"
            body = make_body(task_id, self.size, self.envelope_type)
            props = pika.BasicProperties(delivery_mode=2, content_type="application/json",
                                         message_id=task_id, headers=self.headers)
            self.channel.basic_publish(self.exchange, self.routing_key, body, props,
                                       mandatory=True)
            self.published += 1

    def on_confirm(self, frame):
        if not isinstance(frame.method, pika.spec.Basic.Ack):
            return self.fail(f"nacked: delivery tag {frame.method.delivery_tag}")
        tag = frame.method.delivery_tag
        if frame.method.multiple:
            self.confirmed_upto = max(self.confirmed_upto, tag)
            self.confirmed_above = {t for t in self.confirmed_above if t > tag}
        else:
            self.confirmed_above.add(tag)
        while self.confirmed_upto + 1 in self.confirmed_above:
            self.confirmed_upto += 1
            self.confirmed_above.remove(self.confirmed_upto)
        if self.confirmed_upto >= self.count:
            self.end = time.time()
            self.connection.close()   # everything is in the queue: nothing to lose
        else:
            self.fill()


def main(argv):
    url, exchange, routing_key, count, prefix = argv[:5]
    size = int(argv[5]) if len(argv) > 5 else 0
    worker_type = argv[6] if len(argv) > 6 else None
    publisher = Publisher(url, exchange, routing_key, int(count), prefix, size,
                          worker_type).run()
    if publisher.failed or publisher.end is None:
        print(f"bare_publisher: {publisher.failed or 'stopped before every confirm'}",
              file=sys.stderr)
        return 1
    print(json.dumps({"start": publisher.start, "end": publisher.end}), flush=True)
    sys.stdin.read()   # until the bench is done with us
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
