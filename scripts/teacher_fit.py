"""How the n-gram teacher (levers.NgramTeacher, LeverRecipe.ngram_distill) predicts the targets it teaches: its
cross-entropy on training batches, with its counts as they are and with leave-one-out (Recipe.ngram_loo), beside
its cross-entropy on validation batches, where it predicts text it never counted.

A teacher whose counts hold the very occurrence it predicts is close to the target itself (a low cross-entropy on
train, far below its val): distilling from it is mostly label smoothing. Leave-one-out takes that occurrence out,
so on training text the teacher predicts as it would on new text; its train figure should then sit near its val.

    python scripts/teacher_fit.py --data-dir data/tinyshakespeare --out results/issue16_loo/teacher_fit_tinyshakespeare.json
    python scripts/teacher_fit.py --data-dir data/pypi --out results/issue16_loo/teacher_fit_pypi.json
    python scripts/teacher_fit.py --data-dir data/pypi --ckpt results/benchmark/X/runs/Y/seed0/ckpt.pt --out ...

--ckpt adds a trained student on the same batches: its own cross-entropy, and its divergence from the teacher,
KL(teacher || student) over the student's output rows, on training batches (against the leave-one-out teacher,
which predicts training text as new text) and on validation batches (against the counted teacher: val was never
counted). A student that matches the teacher on training text and not on val fails to generalize what it was
taught; one that misses it on both cannot represent it.

Batches are train_mps.get_batch's (batch 8, block 64) from a seeded generator; the teacher's rows are token ids
(no shortlist), so every target has one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import levers  # noqa: E402
import train_mps as tm  # noqa: E402
from odegpt_eval.files import atomic_write_bytes  # noqa: E402


def teacher_cross_entropy(teacher: levers.NgramTeacher, data: torch.Tensor, batches: int, seed: int) -> dict:
    """Over `batches` of get_batch's windows of `data`: the share of targets the teacher gives probability 0 (a
    token its counts never saw, or, under leave-one-out, saw only at that position: the teacher has no uniform
    floor, and the student's own cross-entropy term covers them), and the mean -log p_teacher(target) over the
    others."""
    gen = torch.Generator().manual_seed(seed)
    nll, zero, n = 0.0, 0, 0
    for _ in range(batches):
        xb, yb = tm.get_batch(data, gen)
        p = teacher.target(xb, yb).gather(1, yb.reshape(-1, 1)).squeeze(1).double()  # (P,) the target's probability
        nll -= p[p > 0].log().sum().item()
        zero, n = zero + int((p <= 0).sum()), n + p.numel()
    return {"cross_entropy_where_positive": nll / (n - zero), "zero_probability_share": zero / n}


@torch.no_grad()
def student_fit(model, teacher: levers.NgramTeacher, data: torch.Tensor, batches: int, seed: int) -> dict:
    """Over the same batches as teacher_cross_entropy: the student's cross-entropy on the targets, and the mean over
    positions of KL(teacher || student) over the student's output rows (the teacher's zero rows add nothing)."""
    gen = torch.Generator().manual_seed(seed)
    ce = kl = 0.0
    model.keep_log_probs = True
    for _ in range(batches):
        xb, yb = tm.get_batch(data, gen)
        _, loss = model(xb, yb)
        logp = model.last_log_probs.reshape(-1, teacher.n_rows).double()  # (P, rows)
        t = teacher.target(xb, yb).double()  # (P, rows)
        kl += (t * (t.clamp_min(1e-300).log() - logp)).sum(1).mean().item()
        ce += loss.item()
    model.keep_log_probs, model.last_log_probs = False, None
    return {"student_cross_entropy": ce / batches, "kl_teacher_student": kl / batches}


def run(data_dir: Path, batches: int, seed: int, ckpt=None) -> dict:
    t0 = time.time()
    train = tm.load_split(data_dir, "train", tm.Recipe().vocab_size)
    val = tm.load_split(data_dir, "val", tm.Recipe().vocab_size)
    V = tm.Recipe().vocab_size
    plain, loo = levers.NgramTeacher(train, V), levers.NgramTeacher(train, V, leave_one_out=True)
    train_t, val_t = (torch.from_numpy(a.astype(np.int64)) for a in (train, val))
    out = {
        "data_dir": str(data_dir),
        "batches": batches,
        "seed": seed,
        "discounts": {"bigram": plain.discounts[0], "trigram": plain.discounts[1]},
        "train_counts_as_they_are": teacher_cross_entropy(plain, train_t, batches, seed),
        "train_leave_one_out": teacher_cross_entropy(loo, train_t, batches, seed),
        "val": teacher_cross_entropy(plain, val_t, batches, seed),
    }
    if ckpt is not None:
        from _study_common import load_checkpoint

        model, _ = load_checkpoint(ckpt)
        k = model.config.shortlist_size
        rows = model.token_rows.cpu().numpy() if k else None
        over_rows = {loo: levers.NgramTeacher(train, V, rows, k, leave_one_out=loo) for loo in (False, True)}
        out["student"] = {
            "ckpt": str(ckpt),
            "train_vs_leave_one_out_teacher": student_fit(model, over_rows[True], train_t, batches, seed),
            "val_vs_counted_teacher": student_fit(model, over_rows[False], val_t, batches, seed),
        }
    out["seconds"] = time.time() - t0
    return out


def _study_error():
    from _study_common import StudyError

    return StudyError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=ROOT / "data" / "tinyshakespeare", help="train.bin and val.bin")
    p.add_argument("--batches", type=int, default=50, help="batches of 8 x 64 targets per figure")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON output (default: print only)")
    p.add_argument("--ckpt", type=Path, default=None, help="a trained student (train_mps.py checkpoint) to compare")
    a = p.parse_args(argv)
    if a.batches < 1:
        p.error(f"--batches must be >= 1, got {a.batches}")
    try:
        res = run(a.data_dir, a.batches, a.seed, a.ckpt)
    except (tm.DataError, _study_error()) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for key in ("train_counts_as_they_are", "train_leave_one_out", "val"):
        r = res[key]
        print(
            f"[teacher_fit] {a.data_dir} {key}: teacher cross-entropy {r['cross_entropy_where_positive']:.3f} on the "
            f"targets it gives probability > 0; probability 0 on {r['zero_probability_share']:.2%}"
        )
    for key, r in (res.get("student") or {}).items():
        if key != "ckpt":
            print(
                f"[teacher_fit] student {key}: cross-entropy {r['student_cross_entropy']:.3f}, "
                f"KL(teacher || student) {r['kl_teacher_student']:.3f}"
            )
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(a.out, (json.dumps(res, indent=1, allow_nan=False) + "\n").encode())
        print(f"[teacher_fit] wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
