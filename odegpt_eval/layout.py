"""The DreamTeam original layout: fixed locals at the top of train(), a data folder the user writes in as a literal,
device 'mps' used directly, no seed. The runner adapts exactly those lines (adapt_original_layout) and says so."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

from . import constraints
from .files import atomic_write_bytes
from .specs import FIXED, BenchmarkError
from .splits import make_candidate_data

ORIGINAL_DATA_SUBDIR = "shakespeare"  # the original joins data_dir with "shakespeare/train.bin"


def train_layout(source: str) -> str:
    """ "module" (odegpt's fixed block at module level), "train" (the DreamTeam original's fixed locals in train())
    or "none", as scripts/check_constraints.py infers it."""
    try:
        return constraints.layout(source)
    except SyntaxError:
        return "none"


def runner_device() -> str:
    """The device an original-layout candidate runs on here: 'mps' where there is one, else 'cuda', else 'cpu'."""
    import torch

    if torch.backends.mps.is_available():
        return "mps"
    return "cuda" if torch.cuda.is_available() else "cpu"


def adapt_original_layout(source: str, data_parent: Path, device: str, max_iters: int | None) -> tuple[str, list[str]]:
    """An original-layout train_mps.py made runnable here, and what was changed (one note per line changed). Only
    the value of three top-level assignments of train() is rewritten, everything else stays byte for byte:
      data_dir = '<any folder literal>'  ->  data_parent (the runner-made folder whose shakespeare/ holds the data);
      device = 'mps'                     ->  `device`, where this machine has no MPS;
      max_iters = 10001                  ->  max_iters, for shortened runs (--max-iters) only.
    A relative 'data/shakespeare/...' literal (the starting file's) needs no change: the run's working directory
    holds the runner-made data/shakespeare/."""
    tree = ast.parse(source)
    train = next(
        (n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == "train"), None
    )
    if train is None:
        raise BenchmarkError("an original-layout train_mps.py without a top-level train()")
    raw = source.encode("utf-8")
    starts = [0]  # byte offset of each line (ast's col_offset counts UTF-8 bytes)
    for line in raw.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    edits, notes, seen = [], [], set()
    for stmt in train.body:
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
            continue
        name, value = stmt.targets[0].id, stmt.value
        if name in seen or not isinstance(value, ast.Constant):
            continue
        seen.add(name)
        new = note = None
        if name == "data_dir" and isinstance(value.value, str):
            new = repr(str(data_parent))
            note = f"data_dir {value.value!r} -> the runner-made data folder {str(data_parent)!r}"
        elif name == "device" and value.value == "mps" and device != "mps":
            new, note = repr(device), f"device 'mps' -> {device!r} (this machine has no MPS)"
        elif name == "max_iters" and max_iters is not None and value.value == FIXED["max_iters"]:
            new, note = str(max_iters), f"max_iters {FIXED['max_iters']} -> {max_iters} (--max-iters: SHORTENED)"
        if new is not None:
            a = starts[value.lineno - 1] + value.col_offset
            b = starts[value.end_lineno - 1] + value.end_col_offset
            edits.append((a, b, new.encode("utf-8")))
            notes.append(f"train_mps.py line {stmt.lineno}: {note}")
    for a, b, new in sorted(edits, reverse=True):
        raw = raw[:a] + new + raw[b:]
    return raw.decode("utf-8"), notes


def prepare_candidate(source: Path, rdir: Path, data_dir: Path, max_iters) -> tuple[Path, dict, str, list[str]]:
    """The folder a run imports, its held-out split (make_candidate_data), its layout and the adaptations made.
    odegpt's layout runs from the snapshot as it is, its data in rdir/data. The original layout runs from an adapted
    copy in rdir/candidate, its data in rdir/data/shakespeare/ (where both of its spellings of the path point)."""
    original = (source / "train_mps.py").read_bytes()
    layout = train_layout(original.decode("utf-8", errors="replace"))
    if layout != "train":
        return source, make_candidate_data(data_dir, rdir / "data"), layout, []
    heldout = make_candidate_data(data_dir, rdir / "data" / ORIGINAL_DATA_SUBDIR)
    text, notes = adapt_original_layout(original.decode("utf-8"), rdir / "data", runner_device(), max_iters)
    folder = rdir / "candidate"
    folder.mkdir()
    atomic_write_bytes(folder / "train_mps.py", text.encode("utf-8"))
    shutil.copyfile(source / "model.py", folder / "model.py")
    notes += [
        f"working directory: the run's folder, so a relative 'data/{ORIGINAL_DATA_SUBDIR}/...' path reads the "
        "runner-made data",
        "seeded by the runner before the import (random, numpy, torch: the run's seed); the original sets no seed",
        "a 0-d floating torch.Tensor is accepted as the returned best_vloss (the original returns one)",
    ]
    return folder, heldout, layout, notes
