"""The count-based reference row of every loss table: Kneser-Ney n-grams fitted on the benchmark's train.bin."""

from __future__ import annotations

from pathlib import Path

from .specs import BenchmarkError
from .splits import heldout_halves, heldout_split, val_tokens

REFERENCE_ORDERS = (2, 3, 4, 5)


def reference_losses(data_dir: Path) -> dict | None:
    """The count-based reference row of every loss table: interpolated modified Kneser-Ney n-grams fitted on
    the benchmark's train.bin, scored under full_split_loss's protocol (scripts/kneser_ney.py; seconds).
    None, with a note, where the data is not there to fit (a merge of runs made elsewhere)."""
    import numpy as np

    from . import kneser_ney

    if not ((data_dir / "train.bin").exists() and (data_dir / "val.bin").exists()):
        print(f"[benchmark] no train.bin/val.bin in {data_dir}: no Kneser-Ney reference row", flush=True)
        return None
    train = np.fromfile(data_dir / "train.bin", dtype=np.uint16)
    raw = (data_dir / "val.bin").read_bytes()
    val = val_tokens(raw)
    full = kneser_ney.fit(train, max(REFERENCE_ORDERS), kneser_ney.VOCAB_SIZE)
    losses = {n: kneser_ney.whole_split_loss(full.with_order(n), val) for n in REFERENCE_ORDERS}
    print(
        "[benchmark] reference, Kneser-Ney whole-split val: " + ", ".join(f"n={n} {v:.4f}" for n, v in losses.items()),
        flush=True,
    )
    kn = {"whole_split_val": {str(n): v for n, v in losses.items()}, "script": "scripts/kneser_ney.py"}
    try:  # the held-out test split the trusted test loss is computed on, and the candidate's part (where its
        # returned best_vloss is measured): the runner's own cut, from the bytes read above
        test, mine = heldout_halves(heldout_split(data_dir, raw), val)
    except BenchmarkError:
        test = None
    if test is not None:
        kn["heldout_test"] = {str(n): kneser_ney.whole_split_loss(full.with_order(n), test) for n in REFERENCE_ORDERS}
        kn["candidate_val"] = {str(n): kneser_ney.whole_split_loss(full.with_order(n), mine) for n in REFERENCE_ORDERS}
    return {"kneser_ney": kn}
