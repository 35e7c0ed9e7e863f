"""Text from outside (message ids, queue names, headers, a plugin's error) made safe to show.

A message id or a header is whatever its publisher chose: an ESC starts a
terminal control sequence (it can rewrite or hide what an operator sees), a
CR or a newline forges a line of the log. Every log line (logs.py) and what
the commands print (`dead list`, `status`, `submit`) pass through `printable`:
printable Unicode stays as it is, readable; every other character becomes a
visible escape, as Python writes it in a string literal: `\\x1b`, `\\r`,
`\\n`, `\\u202e`. A backslash stays as it is (paths and tracebacks stay
readable), so an escape may also have been typed literally: what matters is
that nothing reaches the terminal or the log as a control character.
"""

#: The escapes Python itself uses for these.
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def printable(text, newlines=False, spaces=True):
    """`text` (any object: its str) with each non-printable character escaped.

    newlines=True keeps "\\n" (the line breaks of a traceback; logs.py marks
    each further line); every other line separator (CR, VT, FF, U+2028...) is
    escaped whatever. spaces=False escapes the space too (`\\x20`), for a field
    that must stay one word.
    """
    text = str(text)
    if text.isprintable() and (spaces or " " not in text):
        return text     # nearly every line: no copy
    return "".join(_char(c, newlines, spaces) for c in text)


def _char(c, newlines, spaces):
    if c == " ":
        return c if spaces else "\\x20"
    if c.isprintable() or (c == "\n" and newlines):
        return c
    if c in _SHORT:
        return _SHORT[c]
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
