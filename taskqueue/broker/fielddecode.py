"""AMQP field tables decoded within bounds: no header a broker delivers can make pika raise.

pika decodes a message's headers (an AMQP field table) recursively, inside its
frame parser, before any callback of ours runs, and raises on what it cannot
represent: a table nested ~500 levels deep (RecursionError; RabbitMQ 3.10 takes
700), a timestamp past the year 9999 (ValueError). The connection then drops
and the broker delivers the same message again, to every consumer, for ever.

install() (done by amqp.py on import: in the daemons and the tools, never in an
application that imports only the Client, whose pika stays as shipped) puts
decode_table and decode_value below in pika.data's place: pika.spec
calls them through the module (`data.decode_table`), pika 1.2.0 to 1.4 alike.
They never raise on any bytes. A table beyond the limits below, or one pika
could not decode, becomes an UndecodedTable: an empty dict that says why
(`problem`) and keeps the table's bytes (`raw`); the offset after it comes from
its length prefix, so the message's other properties are read as ever. Only
this module makes one: nothing on the wire can. Every consumer checks for it
(`problem_of`) and dead-letters such a message with the reason, once.

Within the limits, every value is pika's own: the fixed-size kinds are decoded
by pika's own decode_value (whose readings of 'b', 'B', 'l' and 'T' changed
between versions), strings, tables and arrays as pika does.
"""
import struct

import pika.data
import pika.spec

from taskqueue.errors import UndecodableField

#: Tables and arrays nested in one another, the message's own table counted.
MAX_DEPTH = 32
#: Values in one table, at every level (an array's elements each count).
MAX_FIELDS = 10_000
#: Bytes of one table. RabbitMQ's frame_max (128 KiB) bounds a message's properties:
#: this leaves room for the headers taskqueue adds to a retry or a dead letter.
MAX_TABLE_BYTES = 65_536

_LENGTH = struct.Struct(">I")
#: The fixed-size kinds and their sizes; pika's decode_value reads them.
_FIXED = {ord(k): size for k, size in (("t", 1), ("b", 1), ("B", 1), ("U", 2), ("u", 2),
                                      ("s", 2), ("I", 4), ("i", 4), ("L", 8), ("l", 8),
                                      ("f", 4), ("d", 8), ("D", 5), ("T", 8))}
_NAMES = {"t": "boolean", "b": "short-short integer", "B": "short-short integer",
          "U": "short integer", "u": "short integer", "s": "short integer",
          "I": "long integer", "i": "long integer", "L": "long-long integer",
          "l": "long-long integer", "f": "float", "d": "double", "D": "decimal",
          "T": "timestamp"}
_STRING, _BYTES, _TABLE, _ARRAY, _VOID = (ord(k) for k in "SxFAV")


class UndecodedTable(dict):
    """An empty table standing for one that was not decoded: `problem` says why (a
    sentence), `raw` holds its bytes, length prefix included (cut at the end of the
    data when its length ran past it)."""
    __slots__ = ("problem", "raw")

    def __init__(self, problem, raw):
        super().__init__()
        self.problem = problem
        self.raw = bytes(raw)

    def __repr__(self):
        return f"UndecodedTable({self.problem!r}, {len(self.raw)} bytes)"


def problem_of(props):
    """Why `props`' headers were not decoded (a sentence), or None when they were."""
    headers = getattr(props, "headers", None)
    return headers.problem if isinstance(headers, UndecodedTable) else None


class _Refused(Exception):
    """A table is not decoded; `path` (keys, outermost first) says where, once unwound."""

    def __init__(self, what):
        super().__init__(what)
        self.what = what
        self.path = []

    def sentence(self):
        if not self.path:
            return self.what
        where = ".".join(_shown_key(key) for key in reversed(self.path))
        if len(where) > 120:
            where = where[:117] + "..."
        return f"{self.what} (at {where})"


def _shown_key(key):
    if isinstance(key, int):
        return f"[{key}]"
    if isinstance(key, str) and key.isprintable() and key and "." not in key and len(key) <= 40:
        return key
    return repr(key)[:40]


class _Reader:
    """One table's decoding: bounds-checked, depth- and count-limited; raises _Refused."""
    __slots__ = ("data", "fields")

    def __init__(self, data):
        self.data = data
        self.fields = 0

    def length(self, offset, end, what):
        if offset + 4 > end:
            raise _Refused(f"the length of {what} runs past the end of its table")
        size = _LENGTH.unpack_from(self.data, offset)[0]
        if offset + 4 + size > end:
            raise _Refused(f"{what} ({size} bytes) runs past the end of its table")
        return offset + 4, offset + 4 + size

    def table(self, start, end, depth):
        """The table whose entries are data[start:end]."""
        if depth > MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels (tables and arrays)")
        data, out, offset = self.data, {}, start
        while offset < end:
            size = data[offset]
            if offset + 1 + size > end:
                raise _Refused("a field name runs past the end of its table")
            key = data[offset + 1:offset + 1 + size]
            try:
                key = key.decode("utf8")
            except UnicodeDecodeError:
                pass    # kept as bytes, as pika does
            try:
                out[key], offset = self.value(offset + 1 + size, end, depth)
            except _Refused as exc:
                exc.path.append(key)
                raise
        return out

    def value(self, offset, end, depth):
        """(the value at data[offset], the offset after it), within data[:end]."""
        if offset >= end:
            raise _Refused("a field has a name and no value")
        self.fields += 1
        if self.fields > MAX_FIELDS:
            raise _Refused(f"more than {MAX_FIELDS} fields")
        kind = self.data[offset]
        if kind == _STRING or kind == _BYTES:
            start, stop = self.length(offset + 1, end, "a string")
            value = self.data[start:stop]
            if kind == _STRING:
                try:
                    value = value.decode("utf8")
                except UnicodeDecodeError:
                    pass    # kept as bytes, as pika does
            return value, stop
        if kind == _TABLE:
            start, stop = self.length(offset + 1, end, "a table")
            return self.table(start, stop, depth + 1), stop
        if kind == _ARRAY:
            start, stop = self.length(offset + 1, end, "an array")
            return self.array(start, stop, depth + 1), stop
        if kind == _VOID:
            return None, offset + 1
        size = _FIXED.get(kind)
        if size is None:
            raise _Refused(f"unknown field kind {chr(kind)!r}")
        if offset + 1 + size > end:
            raise _Refused(f"a {_NAMES[chr(kind)]} runs past the end of its table")
        try:
            value, after = _pika_decode_value(self.data, offset)
        except Exception as exc:   # a value pika cannot represent (a timestamp past 9999...)
            raise _Refused(f"a {_NAMES[chr(kind)]} pika cannot decode "
                           f"({type(exc).__name__}: {str(exc)[:80]})") from None
        return value, after

    def array(self, start, end, depth):
        if depth > MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels (tables and arrays)")
        out, offset = [], start
        while offset < end:
            try:
                value, offset = self.value(offset, end, depth)
            except _Refused as exc:
                exc.path.append(len(out))
                raise
            out.append(value)
        return out


def decode_table(encoded, offset):
    """pika.data.decode_table within bounds: (the table, the offset after it). Never
    raises: a table it does not decode is an UndecodedTable saying why."""
    try:
        size = _LENGTH.unpack_from(encoded, offset)[0]
    except (struct.error, TypeError):
        return UndecodedTable("the table's length is cut off", encoded[offset:]), len(encoded)
    start, end = offset + 4, offset + 4 + size
    if end > len(encoded):
        return UndecodedTable(f"the table's length ({size} bytes) runs past the end of the "
                              f"message properties", encoded[offset:]), end
    if size > MAX_TABLE_BYTES:
        return UndecodedTable(f"the table takes {size} bytes, more than {MAX_TABLE_BYTES}",
                              encoded[offset:end]), end
    try:
        return _Reader(encoded).table(start, end, 1), end
    except _Refused as exc:
        return UndecodedTable(exc.sentence(), encoded[offset:end]), end
    except Exception as exc:    # a bug of ours, or a pika that changed: never into its parser
        return UndecodedTable(f"cannot be decoded ({type(exc).__name__}: {str(exc)[:80]})",
                              encoded[offset:end]), end


def decode_value(encoded, offset):
    """pika.data.decode_value within the same bounds, for a direct caller (pika's own
    decode_table, the only one in pika, is replaced too): (value, offset after it), or
    UndecodableField saying why, never a RecursionError."""
    try:
        return _Reader(encoded).value(offset, len(encoded), 1)
    except _Refused as exc:
        raise UndecodableField(exc.sentence()) from None


def _decode_properties(self, encoded, offset=0):
    """BasicProperties.decode, guarded: properties pika cannot read (cut short: RabbitMQ
    refuses those, this is the last line) become properties whose headers say why."""
    try:
        return _pika_decode_properties(self, encoded, offset)
    except Exception as exc:
        self.__init__()
        self.headers = UndecodedTable(f"the message properties cannot be decoded "
                                      f"({type(exc).__name__}: {str(exc)[:80]})", encoded[offset:])
        return self


# pika's own, kept on pika's modules too, so that a second import of this module (a
# reload) takes pika's and not ours.
_pika_decode_value = getattr(pika.data, "_pika_decode_value", pika.data.decode_value)
_pika_decode_properties = getattr(pika.spec.BasicProperties, "_pika_decode",
                                  pika.spec.BasicProperties.decode)


def install():
    """Put the bounded decoders in pika's place, once per process."""
    if pika.data.decode_table is not decode_table:
        pika.data._pika_decode_value = _pika_decode_value
        pika.spec.BasicProperties._pika_decode = _pika_decode_properties
        pika.data.decode_table = decode_table
        pika.data.decode_value = decode_value
        pika.spec.BasicProperties.decode = _decode_properties
