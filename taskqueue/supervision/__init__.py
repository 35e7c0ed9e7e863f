"""The supervisor: forking children, their lifecycle, restarts, user switching, the graveyard
of poison tasks, the status socket and metrics endpoint. May import broker, host, protocol
and the ground; never the runtimes (daemon commands join the two).
"""
