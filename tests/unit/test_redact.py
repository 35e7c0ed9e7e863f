"""redact: URL passwords and remembered secrets never reach a person's screen."""
import pytest

from taskqueue import redact


@pytest.mark.parametrize("text, shown", [
    ("amqp://tq:s3cret@broker:5672/v", "amqp://tq:***@broker:5672/v"),
    ("amqps://tq:p%40ss%2Fw@b/v, amqp://u:x@c/", "amqps://tq:***@b/v, amqp://u:***@c/"),
    ("cannot reach AMQP://tq:s3cret@broker/: refused", "cannot reach AMQP://tq:***@broker/: refused"),
    ("amqp://:onlypass@broker/", "amqp://:***@broker/"),
    ("amqp://tq@broker/ and amqp://broker/", "amqp://tq@broker/ and amqp://broker/"),   # none
    ("<URLParameters host=broker port=5672>", "<URLParameters host=broker port=5672>"),
])
def test_url_passwords_are_masked_and_the_rest_kept(text, shown):
    assert redact.redact(text, secrets=()) == shown


def test_given_secrets_are_masked_anywhere_longest_first():
    text = "PlainCredentials('tq', 'hunter2hunter2') failed; hunter2 again"
    assert (redact.redact(text, secrets={"hunter2", "hunter2hunter2"})
            == "PlainCredentials('tq', '***') failed; *** again")


def test_remembered_secrets_are_masked_and_short_ones_ignored(monkeypatch):
    monkeypatch.setattr(redact, "_secrets", set())
    redact.remember("Zq9-distinctive")
    redact.remember("ab")          # too short to search for in free text
    redact.remember(None)
    assert redact.redact(ValueError("bad Zq9-distinctive ab")) == "bad *** ab"


def test_log_lines_and_tracebacks_are_redacted(monkeypatch):
    import io
    import logging
    from taskqueue.host import logs
    monkeypatch.setattr(redact, "_secrets", set())
    redact.remember("Log-s3cret-77")
    stream = io.StringIO()
    logs.setup("DEBUG", "stderr", stream=stream)
    log = logging.getLogger("taskqueue.test")
    try:
        log.info("connecting to %s", "amqp://tq:Url-s3cret@broker/")
        try:
            raise ValueError("login Log-s3cret-77 refused")
        except ValueError:
            log.exception("it failed")
        text = stream.getvalue()
    finally:
        logging.getLogger().handlers[:] = []
    assert "amqp://tq:***@broker/" in text and "login *** refused" in text
    assert "s3cret" not in text


def test_a_client_hides_the_passwords_it_was_given(monkeypatch):
    from taskqueue.client import Client
    from taskqueue.errors import TaskqueueError
    monkeypatch.setattr(redact, "_secrets", set())
    Client("amqp://tq:Client%2Fpw9@127.0.0.1:1/x")
    Client(host="127.0.0.1", password="Option-pw9")
    Client(password="guest")     # the well-known default is no secret: "guest" stays readable
    assert (str(TaskqueueError("Client/pw9 Client%2Fpw9 Option-pw9 guest"))
            == "*** *** *** guest")
