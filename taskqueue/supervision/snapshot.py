"""What a supervisor tells `taskqueue status`: its groups and children, as a document.

A client connects to the status socket (endpoints.py) and reads one JSON
document, then EOF; it sends nothing. The document is built from what the
supervisor already tracks, in one go without yielding, so it is a consistent
picture of one instant. Pure: no I/O, no gevent.
"""
import os
import time

from taskqueue import __version__
from taskqueue.supervision.lifecycle import ChildState

#: Version of the document; a client refuses others.
FORMAT = 1
#: Worst first: a group's state is the worst of its children's.
SEVERITY = (ChildState.QUARANTINED, ChildState.BACKOFF, ChildState.STARTING,
            ChildState.STOPPING, ChildState.RUNNING, ChildState.STOPPED)


def socket_path(status_dir, command):
    """`/run/taskqueue/taskqueue-workerpool.sock`: named like the init scripts' pidfiles."""
    return os.path.join(status_dir, f"taskqueue-{command}.sock")


def snapshot(supervisor, name, now=None):
    """The supervisor and its groups, as a JSON-ready dict."""
    now = time.monotonic() if now is None else now
    wanted = {spec.name: spec for spec in supervisor.specs}
    by_group = {}
    for slot in supervisor.slots:     # retired slots of a reload too, while they stop
        by_group.setdefault(slot.spec.name, []).append(slot)
    groups = [group_status(wanted.get(group_name), slots, now)
              for group_name, slots in by_group.items()]
    return {
        "format": FORMAT,
        "supervisor": {"name": name, "pid": os.getpid(), "version": __version__,
                       "uptime": round(now - supervisor.started_at, 3),
                       "stopping": supervisor.stopping},
        "groups": sorted(groups, key=lambda g: (g["kind"] != "dispatcher", g["name"])),
        "brokers": broker_status(supervisor.slots, getattr(supervisor, "broker_failures", {}), now),
    }


def broker_status(slots, failures, now):
    """The brokers as this supervisor's children see them: each one a child is connected
    to (how many), and each one a child failed to reach or lost lately (how long ago,
    why). AMQP tells a client nothing of the other nodes of a cluster: this is the view
    from the connections, not the cluster's own."""
    rows = {}
    for slot in slots:
        if slot.broker:
            where, _, server = slot.broker.partition(" ")
            row = rows.setdefault(where, {"address": where, "server": server, "children": 0,
                                          "failed_ago": None, "failure": None})
            row["children"] += 1
    for where, (when, why) in failures.items():
        row = rows.setdefault(where, {"address": where, "server": None, "children": 0,
                                      "failed_ago": None, "failure": None})
        row["failed_ago"], row["failure"] = round(max(0.0, now - when), 3), why
    return sorted(rows.values(), key=lambda row: row["address"])


def group_status(spec, slots, now):
    """One group: `spec` is its current spec, None when a reload removed it."""
    current = spec or slots[0].spec
    worker_type, _, subgroup = current.name.partition("/")
    exited = [slot for slot in slots if slot.last_exit]
    last = max(exited, key=lambda slot: slot.exited_at) if exited else None
    return {
        "name": current.name,
        "kind": current.kind,
        "type": worker_type,
        "subgroup": subgroup or None,
        "user": current.user,
        "queue": current.queue,
        "processes": spec.processes if spec else 0,
        "running": sum(slot.state is ChildState.RUNNING for slot in slots),
        "busy": sum(slot.task is not None for slot in slots),
        "state": group_state(slot.state for slot in slots),
        "restarts": sum(slot.restarts for slot in slots),
        "tasks_done": sum(slot.tasks_done for slot in slots),
        "retries": sum(slot.retries for slot in slots),
        "expired": sum(slot.expired for slot in slots),
        "last_exit": last.last_exit if last else None,
        "last_exit_ago": round(now - last.exited_at, 3) if last else None,
        "children": [child_status(slot, now) for slot in sorted(slots, key=lambda s: s.index)],
    }


def child_status(slot, now):
    waiting = slot.state in (ChildState.BACKOFF, ChildState.QUARANTINED) and slot.timer_due
    return {
        "name": slot.key,
        "pid": slot.pid,
        "state": slot.state.value.lower(),
        "task": slot.task,
        "task_seconds": round(now - slot.task_started, 3) if slot.task is not None else None,
        "tasks_done": slot.tasks_done,
        "restarts": slot.restarts,
        "last_exit": slot.last_exit,
        "retry_in": round(max(0.0, slot.timer_due - now), 3) if waiting else None,
        "broker": slot.broker.partition(" ")[0] if slot.broker else None,
    }


def group_state(states):
    """The worst of the children's states, as a word (`quarantined`, `backoff`...)."""
    present = set(states)
    return next((state for state in SEVERITY if state in present), ChildState.STOPPED).value.lower()
