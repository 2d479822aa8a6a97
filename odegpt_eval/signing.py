"""Run records the runner wrote and can verify.

Each benchmark folder holds a random key (KEY_FILE, mode 0600) that only the runner reads: no sandbox binds the
folder, so no candidate can read or replace it. A run's record (run.json) carries an HMAC-SHA256 of its content
under that key; `--resume` keeps a finished run only if its record verifies, so a run.json planted by anything
but the runner (or edited after it) is run again, not trusted. The key is not committed (.gitignore): a committed
report's records are read, never resumed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

KEY_FILE = ".runner-key"
FIELD = "signature"


def key(out: Path, create: bool = True) -> bytes | None:
    """The benchmark folder's key, made on first use (None where there is none and create is False)."""
    path = out / KEY_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        if not create:
            return None
    except ValueError:
        return None
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return bytes.fromhex(path.read_text().strip())


def digest(record: dict, k: bytes) -> str:
    body = json.dumps({a: b for a, b in record.items() if a != FIELD}, sort_keys=True, separators=(",", ":"))
    return hmac.new(k, body.encode(), hashlib.sha256).hexdigest()


def sign(record: dict, k: bytes) -> dict:
    return {**record, FIELD: digest(record, k)}


def verified(record: dict | None, k: bytes | None) -> bool:
    return bool(record) and k is not None and hmac.compare_digest(str(record.get(FIELD, "")), digest(record, k))
