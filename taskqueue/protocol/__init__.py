"""Pure protocol: queue names, routing, workitems, delays, retries, one-hop and nack policy,
reply addresses, the topology plans. No I/O, no pika, no gevent; may import only the ground
(errors, printable, redact).
"""
