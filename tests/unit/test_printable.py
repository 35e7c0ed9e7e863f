"""printable: what reaches a log line or the terminal shows every character, controls none."""
import string

from hypothesis import given, strategies as st

from taskqueue.printable import printable

#: What a terminal or a log reader acts on: C0 and C1 controls, DEL, Unicode line and
#: paragraph separators, bidi overrides and other format characters.
CONTROLS = ("\x1b", "\r", "\n", "\x00", "\x07", "\x08", "\x0b", "\x0c", "\x7f", "\x85", "\x9b",
            "\u2028", "\u2029", "\u202e", "\u200b", "\ufeff", "\udcff")


def test_controls_become_the_escapes_python_writes():
    assert printable("id\x1b[2J\r\nforged\tx") == "id\\x1b[2J\\r\\nforged\\tx"
    assert printable("a\u202eb\x00\U000e0001") == "a\\u202eb\\x00\\U000e0001"


def test_printable_unicode_and_spaces_stay_readable():
    text = "café 日本語 ünïcode ✓ back\\slash 'quotes'"
    assert printable(text) is text or printable(text) == text


def test_newlines_kept_on_request_but_no_other_line_break():
    assert printable("a\nb\rc\u2028d", newlines=True) == "a\nb\\rc\\u2028d"


def test_a_word_can_keep_its_spaces_out():
    assert printable("a b\nc", spaces=False) == "a\\x20b\\nc"


def test_any_object_is_shown_by_its_str():
    assert printable(ValueError("bad \x1b id")) == "bad \\x1b id"
    assert printable(42) == "42"


@given(st.text())
def test_nothing_unprintable_survives_and_printable_text_is_unchanged(text):
    shown = printable(text)
    assert shown.isprintable()
    assert not any(c in shown for c in CONTROLS)
    assert printable(shown) == shown    # once is enough: escaping again changes nothing
    if text.isprintable():
        assert shown == text


@given(st.text(alphabet=st.sampled_from(CONTROLS + tuple(string.printable))))
def test_with_newlines_kept_only_newlines_are_left_raw(text):
    shown = printable(text, newlines=True)
    assert all(line.isprintable() for line in shown.split("\n"))
    assert shown.count("\n") == text.count("\n")
