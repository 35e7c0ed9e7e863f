"""Broker I/O: the gevent Session and the blocking connections, confirms, failover between
nodes, header decoding within bounds, the admission of deliveries and the dead-letter
copies. The only layer that imports pika. May import host, protocol and the ground.
"""
