"""The metadata_props of an ONNX file, read without the `onnx` package.

`onnx.load` parses the whole model with Python protobuf (0.2-0.5 s of imports and parsing on a cold CLI) to
hand back a few key/value strings. This reads only the top level of the ModelProto (field 14,
`metadata_props`: StringStringEntryProto {key = 1, value = 2}) and skips every other field by its length,
so the graph and the weights are never decoded. Untrusted bytes: every length is checked against the data,
and anything malformed raises ValueError (callers turn it into a one-line error).
"""
from __future__ import annotations

METADATA_PROPS = 14  # ModelProto field number (onnx/onnx.proto)


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def _fields(data: bytes):
    """(field number, wire type, value) of one protobuf message: value is an int (varint, fixed) or bytes."""
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 1:
            value, i = int.from_bytes(data[i:i + 8], "little"), i + 8
        elif wire == 5:
            value, i = int.from_bytes(data[i:i + 4], "little"), i + 4
        elif wire == 2:
            size, i = _varint(data, i)
            value, i = data[i:i + size], i + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if i > len(data):
            raise ValueError("truncated field")
        yield number, wire, value


def metadata_props(data: bytes) -> dict[str, str]:
    """{key: value} of a serialized ONNX ModelProto's metadata_props (the last one wins for a repeated key,
    as a dict built from onnx.load's list does)."""
    props: dict[str, str] = {}
    for number, wire, value in _fields(data):
        if number != METADATA_PROPS or wire != 2:
            continue
        entry = {n: v for n, w, v in _fields(value) if w == 2 and n in (1, 2)}
        try:
            props[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
        except UnicodeDecodeError:
            raise ValueError("metadata_props entry is not UTF-8") from None
    return props
