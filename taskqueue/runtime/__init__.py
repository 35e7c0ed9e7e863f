"""The children's runtimes: the dispatcher's routing loop, the worker's intake and task thread,
and the plugins and formats they load (taskqueue.worker, the plugin API, belongs to this
layer). May import supervision, broker, host, protocol and the ground (errors, printable,
redact).
"""
