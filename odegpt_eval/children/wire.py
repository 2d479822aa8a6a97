"""The frames the sandboxed children and the runner exchange over pipes: one format, both directions.

A frame is MAGIC, the header's and the payload's lengths, a JSON header, then the payload's raw bytes. This file is
bound read-only into every sandbox beside the children, so it imports the standard library only.
"""

import json
import os
import struct

MAGIC = b"ODEGPTv1"
LENGTHS = struct.Struct("<IQ")  # header bytes, payload bytes
PREFIX = len(MAGIC) + LENGTHS.size
MAX_HEADER = 1 << 20  # 1 MiB of JSON
MAX_PAYLOAD = 1 << 31  # 2 GiB: the weights of any model the fixed block allows, many times over


class WireError(ValueError):
    """Bytes on a channel that are not a well-formed frame."""


def encode(header: dict, payload: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return MAGIC + LENGTHS.pack(len(head), len(payload)) + head + bytes(payload)


def write_frame(fd: int, header: dict, payload: bytes = b"") -> None:
    """The whole frame to a file descriptor (os.write may take it in parts)."""
    view = memoryview(encode(header, payload))
    while view:
        view = view[os.write(fd, view) :]


def read_exact(fd: int, n: int) -> bytes:
    """n bytes from a file descriptor, or fewer at end of file. Reads no byte past the n (the next reader of the
    same descriptor, a later scoring call, gets the rest)."""
    parts, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_frame(fd: int):
    """(header, payload) of the next frame, or None at end of file; WireError on anything else."""
    prefix = read_exact(fd, PREFIX)
    if not prefix:
        return None
    if len(prefix) < PREFIX or prefix[: len(MAGIC)] != MAGIC:
        raise WireError(f"not a frame: {prefix[:40]!r}")
    n_head, n_payload = LENGTHS.unpack(prefix[len(MAGIC) :])
    if n_head > MAX_HEADER or n_payload > MAX_PAYLOAD:
        raise WireError(f"a frame of {n_head} + {n_payload} bytes: over the limits")
    head = read_exact(fd, n_head)
    payload = read_exact(fd, n_payload)
    if len(head) < n_head or len(payload) < n_payload:
        raise WireError("a frame cut short")
    try:
        header = json.loads(head)
    except ValueError as e:
        raise WireError(f"a frame whose header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise WireError("a frame whose header is not a JSON object")
    return header, payload
