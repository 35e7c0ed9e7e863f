"""What a submitted task is on the wire (client.task_message): the one owner of it."""
import json

import pytest

from taskqueue.client import Client, onehop_message, task_message


def test_a_task_is_the_json_envelope_persistent_with_its_message_id_as_correlation_id():
    body, props = task_message("resize", {"path": "a.png"})
    assert json.loads(body) == {"worker_type": "resize", "workitem": {"path": "a.png"}}
    assert body == b'{"worker_type":"resize","workitem":{"path":"a.png"}}'    # compact
    assert (props.content_type, props.delivery_mode) == ("application/json", 2)
    assert len(props.message_id) == 32 and props.correlation_id == props.message_id
    assert task_message("resize", None)[1].message_id != props.message_id


def test_a_one_hop_task_is_the_workitem_with_the_worker_type_header_persistent():
    body, props = onehop_message("resize", {"path": "a.png"})
    assert body == b'{"path":"a.png"}'    # what the worker receives, compact
    assert props.headers == {"worker_type": "resize"}
    assert (props.content_type, props.delivery_mode) == ("application/json", 2)
    assert len(props.message_id) == 32 and props.correlation_id == props.message_id
    assert onehop_message("resize", None, message_id="m1")[1].message_id == "m1"


@pytest.mark.parametrize("make", [task_message, onehop_message])
@pytest.mark.parametrize("worker_type, workitem, problem", [
    ("no spaces", 1, "worker type 'no spaces' is not 1-200 characters"),
    (None, 1, "worker type None is not"),
    ("resize", {1, 2}, "workitem for resize: not JSON (Object of type set"),
    ("resize", float("nan"), "workitem for resize: not JSON (Out of range float"),
    ("resize", b"bytes", "workitem for resize: not JSON (Object of type bytes"),
])
def test_a_bad_type_or_workitem_is_a_value_error_saying_what(worker_type, workitem, problem, make):
    with pytest.raises(ValueError) as info:
        make(worker_type, workitem)
    assert str(info.value).startswith(problem)


@pytest.mark.parametrize("make", [task_message, onehop_message])
def test_a_workitem_nested_too_deeply_to_encode_is_refused(make):
    workitem = []
    for _ in range(100000):
        workitem = [workitem]
    with pytest.raises(ValueError, match="workitem for resize: not usable JSON: nested too deeply"):
        make("resize", workitem)


def test_a_client_refuses_options_the_amqp_section_does_not_have_and_bad_urls():
    with pytest.raises(TypeError, match="unknown option.*hostname"):
        Client(hostname="x")
    with pytest.raises(ValueError, match="amqp://"):
        Client(url="http://x")
    assert Client(url="amqps://u:p@h/v", heartbeat=30).settings.heartbeat == 30
