"""The AWS event-stream message encoding (application/vnd.amazon.eventstream).

Only what the Bedrock simulator sends: messages with string headers and a JSON
payload. One message is

    total_len:u32 | headers_len:u32 | prelude_crc:u32 | headers | payload | message_crc:u32

all big-endian, where prelude_crc is the CRC32 of the first 8 bytes and
message_crc the CRC32 of everything before it. botocore decodes it on the
client side, so the real parser is what checks this encoder.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping
from typing import Any

_STRING_HEADER = 7
_PRELUDE = struct.Struct(">II")
_CRC = struct.Struct(">I")


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """Encode string headers: name_len:u8, name, type 7, value_len:u16, value."""
    out = bytearray()
    for name, value in headers.items():
        raw_name = name.encode("utf-8")
        raw_value = value.encode("utf-8")
        if len(raw_name) > 255 or len(raw_value) > 65535:
            raise ValueError(f"event-stream header {name!r} is too long")
        out += struct.pack(">B", len(raw_name)) + raw_name
        out += struct.pack(">BH", _STRING_HEADER, len(raw_value)) + raw_value
    return bytes(out)


def encode_message(headers: Mapping[str, str], payload: bytes, *, corrupt: bool = False) -> bytes:
    """Encode one event-stream message; `corrupt` spoils the message CRC on purpose."""
    raw_headers = encode_headers(headers)
    total = _PRELUDE.size + _CRC.size + len(raw_headers) + len(payload) + _CRC.size
    prelude = _PRELUDE.pack(total, len(raw_headers))
    head = prelude + _CRC.pack(zlib.crc32(prelude))
    body = head + raw_headers + payload
    crc = zlib.crc32(body)
    if corrupt:
        crc ^= 0xFFFFFFFF
    return body + _CRC.pack(crc)


def encode_event(event_type: str, payload: Mapping[str, Any], *, corrupt: bool = False) -> bytes:
    """Encode an event message such as `contentBlockDelta` with its JSON payload."""
    headers = {
        ":event-type": event_type,
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return encode_message(headers, _json(payload), corrupt=corrupt)


def encode_exception(exception_type: str, message: str) -> bytes:
    """Encode an exception message sent mid-stream; the type is camelCase as Bedrock sends it."""
    headers = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_message(headers, _json({"message": message}))


def _json(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")
