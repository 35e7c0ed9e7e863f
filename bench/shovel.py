"""The dispatcher's ceiling: a bare pika shovel from queue A to queue B.

What a dispatcher child does minus routing: consume A with a prefetch,
publish each body to B (persistent, mandatory) on a confirm channel, and
ack A only after the broker confirmed the copy, many in flight at once.
One channel, consumed and published in order, so publish sequence number n
is delivery tag n: a confirm of n (multiple or not) acks the same tag on A.

    python shovel.py URL SOURCE DEST PREFETCH COUNT TIMEOUT
"""
import sys

import pika


def main(url, source, dest, prefetch, count, timeout):
    state = {"done": 0}
    connection = None

    def on_message(channel, method, props, body):
        channel.basic_publish("", dest, body, props, mandatory=True)

    def on_confirm(frame):
        tag, multiple = frame.method.delivery_tag, frame.method.multiple
        if isinstance(frame.method, pika.spec.Basic.Ack):
            channel.basic_ack(tag, multiple=multiple)
        else:  # the broker could not store the copy: the input goes back
            channel.basic_nack(tag, multiple=multiple, requeue=True)
        state["done"] = max(state["done"], tag)
        if state["done"] >= count and connection.is_open:
            connection.close()

    def on_channel(ch):
        nonlocal channel
        channel = ch
        channel.confirm_delivery(on_confirm)
        channel.basic_qos(prefetch_count=prefetch)
        channel.basic_consume(source, on_message)

    channel = None
    connection = pika.SelectConnection(
        pika.URLParameters(url),
        on_open_callback=lambda conn: conn.channel(on_open_callback=on_channel),
        on_close_callback=lambda conn, reason: conn.ioloop.stop())
    connection.ioloop.call_later(  # bounded in time as well as in count
        timeout, lambda: connection.is_open and connection.close())
    connection.ioloop.start()
    return 0 if state["done"] >= count else 1


if __name__ == "__main__":
    url, source, dest, prefetch, count, timeout = sys.argv[1:]
    sys.exit(main(url, source, dest, int(prefetch), int(count), float(timeout)))
