"""The judge <-> candidate wire format: length-prefixed JSON frames of plain data.

Values crossing the sandbox boundary are encoded as a tagged JSON tree of
builtin types only (None, bool, int, float, str, bytes, complex, list, tuple,
dict, set, frozenset, and finished iterators). The decoder on the judge's side
rebuilds *exact* builtin types, so an object from the candidate with a patched
`__eq__`, `__bool__` or `__hash__` can never reach the judge's comparisons: only
its plain value crosses. Anything else is refused (`WireError`).

Standard library only: this module is imported inside the sandbox.
"""

from __future__ import annotations

import base64
import json
import socket
import struct

MAX_FRAME_BYTES = 32 * 1024 * 1024  # one message; bigger is a protocol violation
MAX_DEPTH = 200  # nesting of encoded values
MAX_ITER_ITEMS = 1_000_000  # items drained from a returned iterator/generator
_HEADER = struct.Struct("!I")
_SMALL_INT = 1 << 63  # ints beyond this travel as hex (no int-from-decimal-string size limit)


class WireError(Exception):
    """A value or frame that cannot cross the boundary."""


# ---------------------------------------------------------------- values


def encode(value: object, _depth: int = 0) -> object:
    """Plain value -> JSON-able tagged tree. Subclasses of builtins are reduced to the builtin."""
    if _depth > MAX_DEPTH:
        raise WireError("value nested too deeply")
    d = _depth + 1
    if value is None or value is True or value is False:
        return value
    if isinstance(value, int):
        v = int(value)
        return v if -_SMALL_INT < v < _SMALL_INT else {"X": format(v, "x")}
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return {"B": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, complex):
        return {"C": [value.real, value.imag]}
    if isinstance(value, tuple):
        return {"T": [encode(x, d) for x in value]}
    if isinstance(value, list):
        return {"L": [encode(x, d) for x in value]}
    if isinstance(value, frozenset):
        return {"F": [encode(x, d) for x in value]}
    if isinstance(value, set):
        return {"S": [encode(x, d) for x in value]}
    if isinstance(value, dict):
        return {"D": [[encode(k, d), encode(v, d)] for k, v in value.items()]}
    item = getattr(value, "item", None)  # numpy scalars: their Python value
    if callable(item) and type(value).__module__ == "numpy":
        return encode(item(), d)
    if hasattr(value, "__next__") and hasattr(value, "__iter__"):  # generators, map, zip, ...
        items = []
        for x in value:
            if len(items) >= MAX_ITER_ITEMS:
                raise WireError("returned iterator is too long")
            items.append(encode(x, d))
        return {"I": items}
    raise WireError(f"a value of type {type(value).__name__} cannot cross the sandbox boundary "
                    "(only plain data: numbers, strings, bytes, lists, tuples, dicts, sets)")


def _decode_obj(obj: dict) -> object:
    if len(obj) != 1:
        raise WireError("malformed value")
    (tag, v), = obj.items()
    if tag == "L":
        return _list(v)
    if tag == "T":
        return tuple(_list(v))
    if tag == "S":
        return set(_list(v))
    if tag == "F":
        return frozenset(_list(v))
    if tag == "D":
        out = {}
        for pair in _list(v):
            if type(pair) is not list or len(pair) != 2:
                raise WireError("malformed dict item")
            out[pair[0]] = pair[1]
        return out
    if tag == "I":
        return iter(_list(v))
    if tag == "X" and type(v) is str:
        return int(v, 16)
    if tag == "B" and type(v) is str:
        return base64.b64decode(v.encode("ascii"), validate=True)
    if tag == "C" and type(v) is list and len(v) == 2 and all(type(x) in (int, float) for x in v):
        return complex(v[0], v[1])
    raise WireError(f"unknown value tag {tag!r}")


def _list(v: object) -> list:
    if type(v) is not list:
        raise WireError("malformed container")
    return v


def loads_value(text: str) -> object:
    """JSON text -> value with exact builtin types. Raises WireError on anything else.

    JSON objects only ever stand for tagged values; frames are JSON arrays."""
    try:
        return json.loads(text, object_hook=_decode_obj)
    except WireError:
        raise
    except (ValueError, TypeError, RecursionError, MemoryError) as e:  # unhashable keys, bad base64, ...
        raise WireError(f"undecodable value: {type(e).__name__}") from None


# ---------------------------------------------------------------- frames


def send_frame(sock: socket.socket, message: list) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_FRAME_BYTES:
        raise WireError(f"message of {len(data)} bytes exceeds the {MAX_FRAME_BYTES}-byte frame limit")
    sock.sendall(_HEADER.pack(len(data)) + data)


def recv_frame_text(sock: socket.socket) -> str:
    """One frame's JSON text. Raises EOFError when the peer is gone, WireError when oversized."""
    header = _recv_exact(sock, _HEADER.size)
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME_BYTES:
        raise WireError(f"frame of {size} bytes exceeds the limit")
    return _recv_exact(sock, size).decode("utf-8", errors="strict")


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise EOFError("peer closed the connection")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
