"""Read a W&B ``.wandb`` transaction log with W&B's own protobuf definitions.

wandb >= 0.2x moved its Python log reader into the Go core; the format is
still LevelDB-style: a 7-byte header (":W&B", magic 0xBEE1, version 0), then
32 KiB blocks of records (crc32 of type+data, uint16 length, uint8 type:
1 full, 2 first, 3 middle, 4 last) whose payloads are ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Iterator

BLOCK = 32 * 1024
HEADER = struct.Struct("<4sHB")
RECORD = struct.Struct("<IHB")


def records(path: Path) -> Iterator[object]:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    ident, magic, version = HEADER.unpack_from(data, 0)
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), (ident, magic, version)
    pos, buf = HEADER.size, b""
    while pos + RECORD.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < RECORD.size:  # block trailer padding
            pos += left
            continue
        crc, length, kind = RECORD.unpack_from(data, pos)
        if length == 0 and kind == 0:
            pos += left
            continue
        payload = data[pos + RECORD.size: pos + RECORD.size + length]
        assert zlib.crc32(bytes([kind]) + payload) & 0xFFFFFFFF == crc, f"bad checksum at {pos}"
        pos += RECORD.size + length
        buf = payload if kind in (1, 2) else buf + payload
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            yield rec
            buf = b""
