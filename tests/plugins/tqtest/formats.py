"""Body formats the integration tests install (entry-point group taskqueue.formats).

`read_workflow` reads a workflow engine's step, `{"step": TYPE, "data": ...}`:
the data, JSON-encoded, goes to worker type TYPE. `read_picky` forwards its
body to `recorder` unchanged, except a body starting with `bad`, which it refuses.
"""
import json


def read_workflow(body):
    doc = json.loads(body)
    if not isinstance(doc, dict) or "step" not in doc:
        raise ValueError('a workflow message is {"step": TYPE, "data": ...}')
    return doc["step"], json.dumps(doc.get("data")).encode()


def read_picky(body):
    if body.startswith(b"bad"):
        raise ValueError(f"picky refuses {body[:20]!r}")
    return "recorder", body
