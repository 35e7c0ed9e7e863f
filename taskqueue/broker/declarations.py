"""One runner for the topology plans (protocol/plans.py), over a gevent Session or a
blocking connection: each declaration in order, a refused queue declared again with an
older taskqueue's arguments where topology.legacy_arguments allows, every other refusal
explained as the plan says (TopologyError) or left as the channel's own error.

A plan runs on channels of its own (the `channels` adapter opens them): a refusal
closes one of those, never the caller's. The adapters, a few lines each, are
amqp.py's (gevent) and blocking.py's.
"""
import dataclasses
import logging

from taskqueue.errors import TopologyError
from taskqueue.protocol import plans, topology

log = logging.getLogger(__name__)


class Refused(Exception):
    """The broker closed the channel a declaration ran on; `reason` says why."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def run(plan, channels):
    """Declare each of `plan` on channels from `channels`; return the reply to the last
    queue declared (its frame: how many messages it holds), or None.

    `channels` opens a channel (`open()`), makes a declaration on it and waits for the
    reply (`call(channel, declaration)`, with pika_call; raises Refused), closes one
    (`close(channel)`), says whether a refusal is one for the plan to explain
    (`explains(declaration, reason)`) and what to raise for any other
    (`failure(declaration, reason)`)."""
    channel = channels.open()
    reply = None
    try:
        for declaration in plan:
            while True:
                try:
                    answer = channels.call(channel, declaration)
                    break
                except Refused as refusal:
                    older = _older(declaration, refusal.reason)
                    if older is None:
                        raise _error(channels, declaration, refusal.reason) from None
                    declaration = older
                    channel = channels.open()   # the refusal closed the last one
            if declaration.kind == plans.QUEUE:
                reply = answer
    finally:
        channels.close(channel)
    return reply


def _older(declaration, reason):
    """`declaration` with the arguments an older taskqueue declared its queue with, or
    None: not a queue, or a refusal legacy_arguments does not tolerate."""
    if declaration.kind != plans.QUEUE or declaration.passive:
        return None
    older = topology.legacy_arguments(declaration.name, declaration.arguments, reason)
    if older is None:
        return None
    _note_legacy(declaration.name, declaration.arguments, older)
    return dataclasses.replace(declaration, arguments=older)


def _error(channels, declaration, reason):
    if declaration.explain is not None and channels.explains(declaration, reason):
        return TopologyError(declaration.explain(reason))
    return channels.failure(declaration, reason)


def _note_legacy(queue, arguments, older):
    """Say what a queue declared otherwise costs, once per declare that meets it."""
    if "x-delivery-limit" in arguments and "x-delivery-limit" not in older:
        log.warning("%s", topology.LEGACY_DEAD_QUEUE)
    else:
        log.debug("queue %r exists without %s (an older taskqueue declared it, or the broker "
                  "is older than 3.10): its leader stays where it is", queue,
                  topology.LEADER_LOCATOR)


def pika_call(channel, declaration):
    """(bound method, args, kwargs) of `channel` (a pika channel, gevent or blocking:
    the same methods) that makes `declaration`; everything is durable."""
    d = declaration
    if d.kind == plans.EXCHANGE:
        return (channel.exchange_declare, (d.name,), {"exchange_type": d.exchange_type,
                                                      "durable": True,
                                                      "arguments": d.arguments or None})
    if d.kind == plans.QUEUE and d.passive:
        return channel.queue_declare, (d.name,), {"passive": True}
    if d.kind == plans.QUEUE and d.exclusive:   # classic: an exclusive queue can be no other
        return channel.queue_declare, (d.name,), {"exclusive": True,
                                                 "arguments": {"x-queue-type": "classic"}}
    if d.kind == plans.QUEUE:
        return channel.queue_declare, (d.name,), {"durable": True, "arguments": d.arguments}
    if d.kind == plans.QUEUE_BINDING:
        return channel.queue_bind, (d.name, d.source), {"routing_key": d.routing_key}
    return channel.exchange_bind, (d.name, d.source), {"routing_key": d.routing_key}
