"""The bookkeeping of publisher confirms (protocol/confirmledger.py), which the
dispatcher and ConfirmWindow share."""
from taskqueue.protocol.confirmledger import ConfirmLedger


def ledger_of(*names):
    ledger = ConfirmLedger()
    for name in names:
        ledger.sent(name, ("q", name, b"body"))
    return ledger


def test_a_multiple_ack_settles_every_publish_up_to_its_number_and_no_further():
    ledger = ledger_of("a", "b", "c")
    assert ledger.confirmed(2, multiple=True, acked=True) == [("a", None), ("b", None)]
    assert ledger.entries() == ["c"] and len(ledger) == 1


def test_a_single_ack_settles_that_publish_alone_even_out_of_order():
    ledger = ledger_of("a", "b", "c")
    assert ledger.confirmed(2, multiple=False, acked=True) == [("b", None)]
    assert ledger.entries() == ["a", "c"]


def test_a_confirm_of_a_number_already_settled_or_never_sent_settles_nothing():
    ledger = ledger_of("a")
    ledger.confirmed(1, multiple=False, acked=True)
    assert ledger.confirmed(1, multiple=False, acked=True) == []
    assert ledger.confirmed(7, multiple=True, acked=True) == []


def test_a_nack_settles_as_nacked():
    ledger = ledger_of("a", "b")
    assert ledger.confirmed(2, multiple=True, acked=False) == [
        ("a", ("nacked", None)), ("b", ("nacked", None))]


def test_the_ack_of_a_returned_publish_settles_it_as_returned_with_the_reason():
    ledger = ledger_of("a", "b")
    assert ledger.returned(("q", "b", b"body"), "no queue 'q'") == "b"
    assert ledger.confirmed(2, multiple=True, acked=True) == [
        ("a", None), ("b", ("returned", "no queue 'q'"))]


def test_a_return_is_the_oldest_awaiting_publish_of_that_very_message_not_returned_yet():
    # The same message published twice and returned twice: each return takes one publish.
    ledger = ConfirmLedger()
    for _ in range(2):
        ledger.sent("same", ("q", "m", b"x"))
    ledger.sent("other", ("q", "m", b"y"))
    assert ledger.returned(("q", "m", b"x"), "first") == "same"
    assert ledger.returned(("q", "m", b"x"), "second") == "same"
    assert ledger.returned(("q", "m", b"x"), "third") is None
    assert [problem for _, problem in ledger.confirmed(3, multiple=True, acked=True)] == [
        ("returned", "first"), ("returned", "second"), None]


def test_a_nack_of_a_returned_publish_is_a_nack():
    ledger = ledger_of("a")
    ledger.returned(("q", "a", b"body"), "why")
    assert ledger.confirmed(1, multiple=False, acked=False) == [("a", ("nacked", None))]
