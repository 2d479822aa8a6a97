"""The held-out split: the validation split cut into the candidate's half and the test half only the runner holds,
and the runner-made data folder a candidate trains on."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

from .files import atomic_write_bytes, atomic_write_json
from .specs import FIXED, BenchmarkError

# Trusted scoring (see the module docstring). The candidate's val.bin holds the first windows of the validation
# split; the last TEST_FRACTION of its block_size windows (cut at a window boundary) is the held-out test split.
TEST_FRACTION = 0.5


def split_validation(n_tokens: int, block_size: int = FIXED["block_size"]) -> int:
    """Where the validation split is cut: the candidate's val.bin is tokens [0, cut), the held-out test split
    [cut, n). A multiple of block_size, so both halves keep full_split_loss's windows; no token is a target in
    both (the test split's first token is only an input)."""
    n_windows = (n_tokens - 1) // block_size
    cut = block_size * math.ceil(n_windows * (1 - TEST_FRACTION))
    if cut < block_size + 2 or n_tokens - cut < block_size + 2:
        raise BenchmarkError(
            f"val.bin holds {n_tokens} tokens: too few to cut into the candidate's validation split and a held-out "
            f"test split of at least {block_size + 2} tokens each"
        )
    return cut


def rewrite_meta(meta, old: dict, new: dict):
    """meta.json with every value that described the source split replaced by the new split's (token count, byte
    count, sha256), whatever its key: the set stays self-consistent for any check train_mps.py makes of it."""
    if isinstance(meta, dict):
        return {k: rewrite_meta(v, old, new) for k, v in meta.items()}
    if isinstance(meta, list):
        return [rewrite_meta(v, old, new) for v in meta]
    for kind in ("sha256", "tokens", "bytes"):
        if meta == old[kind] and type(meta) is type(old[kind]):
            return new[kind]
    return meta


def val_tokens(raw: bytes):
    """val.bin's bytes as uint16 tokens: whole tokens only, as np.fromfile reads them."""
    import numpy as np

    return np.frombuffer(raw[: len(raw) // 2 * 2], dtype=np.uint16)


def heldout_split(data_dir: Path, val_bytes: bytes | None = None) -> dict:
    """Where data_dir's validation split is cut into the candidate's half and the held-out test half, and the test
    half's fingerprint: the record heldout_halves reads the two halves back from. Writes nothing. val_bytes: val.bin
    as the caller already read it, so that the cut and what the caller writes come from one read."""

    raw = (data_dir / "val.bin").read_bytes() if val_bytes is None else val_bytes
    val = val_tokens(raw)
    cut = split_validation(len(val))
    test = val[cut:]
    return {
        "source_val": str(data_dir / "val.bin"),
        "candidate_val_tokens": cut,
        "test_start": cut,
        "test_tokens": len(test),
        "test_windows": (len(test) - 1) // FIXED["block_size"],
        "test_sha256": hashlib.sha256(test.tobytes()).hexdigest(),
    }


def make_candidate_data(data_dir: Path, dest: Path) -> dict:
    """The runner-made data folder the candidate trains on: train.bin as it is, val.bin the candidate's half of the
    validation split (heldout_split), meta.json (if the source has one) rewritten to match. Returns where the
    held-out test split is, for the subprocess and the record."""
    val_bytes = (data_dir / "val.bin").read_bytes()
    heldout = heldout_split(data_dir, val_bytes)
    mine = val_bytes[: 2 * heldout["test_start"]]  # uint16 tokens
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data_dir / "train.bin", dest / "train.bin")
    atomic_write_bytes(dest / "val.bin", mine)
    meta_path = data_dir / "meta.json"
    if meta_path.exists():
        old = {"sha256": hashlib.sha256(val_bytes).hexdigest(), "tokens": len(val_bytes) // 2, "bytes": len(val_bytes)}
        new = {"sha256": hashlib.sha256(mine).hexdigest(), "tokens": heldout["test_start"], "bytes": len(mine)}
        atomic_write_json(dest / "meta.json", rewrite_meta(json.loads(meta_path.read_text()), old, new))
    return {**heldout, "candidate_data_dir": str(dest)}


def heldout_halves(heldout: dict, val=None):
    """(held-out test, the candidate's val) as int64 tokens, from the source val.bin heldout_split cut. val: the
    split's tokens as the caller already read them (else read from heldout["source_val"])."""
    import numpy as np

    if val is None:
        val = np.fromfile(heldout["source_val"], dtype=np.uint16)
    val = np.asarray(val).astype(np.int64)
    return val[heldout["test_start"] :], val[: heldout["test_start"]]
