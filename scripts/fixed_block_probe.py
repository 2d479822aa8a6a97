"""A diagnostic for issue #16: train_mps.train() with fixed-block values the harness forbids (a wider residual
stream, more layers, a longer run), scored as the trusted runner scores a candidate. A probe is never a candidate
and never ranks: it asks whether a bigger model or a longer run of the same recipe would close the gap to the
Kneser-Ney reference, which tells a limit of the fixed block (width, depth, step budget) from a limit of the data.

    python scripts/fixed_block_probe.py --data-dir data/pypi --set n_embd=64 \\
        --recipe ngram_distill=0.5,ngram_loo=True,head_width=96 --seed 0 --out results/issue16_probe/pypi_e64_s0.json
    python scripts/fixed_block_probe.py --data-dir data/pypi --set max_iters=20002 ... # twice the step budget
    python scripts/fixed_block_probe.py --data-dir data/pypi --seed 0 --out ...         # no --set: the control
    python scripts/fixed_block_probe.py --data-dir data/pypi --ckpt RUN/ckpt.pt --out ...  # or a finished run's

What it does, as scripts/benchmark.py does for a run: the run's data folder holds train.bin and the first half of
val.bin (odegpt_eval.splits.heldout_split); the second half is the held-out test, scored with the runner's own prefix
scoring (odegpt_eval.scoring.trusted_test_loss) on the checkpoint train() wrote; the Kneser-Ney rows are fitted on the same
train.bin and scored on the same halves. The fixed-block names are set on a private copy of train_mps loaded for
the probe, so nothing else sees them. The JSON (written atomically, once the run is scored) holds the settings,
the figures and the reference rows; an existing one is kept unless --force. Beside the two halves of val it scores
a slice of train.bin as long as the test half: the gap between the two tells a model that cannot fit (high train
loss) from one that memorises (low train loss, wide gap).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from odegpt_eval import kneser_ney  # noqa: E402
from odegpt_eval.files import atomic_write_bytes, atomic_write_json, load_module  # noqa: E402
from odegpt_eval.references import reference_losses  # noqa: E402
from odegpt_eval.scoring import trusted_test_loss  # noqa: E402
from odegpt_eval.specs import BenchmarkError, parse_overrides  # noqa: E402
from odegpt_eval.splits import heldout_halves, heldout_split, make_candidate_data  # noqa: E402

# The fixed-block names a probe may change (train() reads them at call time), and the values they must keep
# relative to each other. eval_interval, device and ctx stay: they change how a run is measured, not the model.
PROBE_NAMES = ("batch_size", "n_layer", "n_head", "n_embd", "max_iters")


class ProbeError(RuntimeError):
    """A usage or input error; the message says what to change."""


def parse_sets(items: list[str]) -> dict[str, int]:
    """['n_embd=64', ...] -> {'n_embd': 64}: fixed-block names, positive integers."""
    sets = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in PROBE_NAMES:
            raise ProbeError(f"--set {item!r}: expected NAME=INTEGER with NAME one of {', '.join(PROBE_NAMES)}")
        try:
            value = int(text)
        except ValueError:
            raise ProbeError(f"--set {item!r}: {text!r} is not an integer") from None
        if value < 1:
            raise ProbeError(f"--set {item!r}: must be >= 1")
        if name in sets:
            raise ProbeError(f"--set names {name} twice")
        sets[name] = value
    return sets


def load_probe_module(sets: dict[str, int]):
    """A private copy of train_mps with the fixed-block names set; the shapes must still fit together."""
    tm = load_module("train_mps_probe", ROOT / "train_mps.py")
    for name, value in sets.items():
        setattr(tm, name, value)
    if tm.n_embd % tm.n_head:
        raise ProbeError(f"n_embd {tm.n_embd} is not a multiple of n_head {tm.n_head}: set both")
    return tm


def checked_data_dir(a: argparse.Namespace) -> Path:
    data_dir = a.data_dir.resolve()
    if not ((data_dir / "train.bin").is_file() and (data_dir / "val.bin").is_file()):
        raise ProbeError(f"{data_dir} lacks train.bin/val.bin; prepare it with `make data` or pass --data-dir")
    return data_dir


def prepare(a: argparse.Namespace):
    """Everything checked before any work: (the probe's train_mps, its recipe, the data folder)."""
    sets = parse_sets(a.set)
    data_dir = checked_data_dir(a)
    tm = load_probe_module(sets)
    import levers  # the recipe with the levers (off by default); the probe's train_mps trains it

    overrides = parse_overrides(a.recipe, levers.LeverRecipe) if a.recipe else {}
    try:
        recipe = levers.LeverRecipe(**{**overrides, "seed": a.seed})
    except ValueError as e:
        raise ProbeError(str(e)) from None
    return tm, recipe, overrides, sets, data_dir


def probe(a: argparse.Namespace, tm, recipe, overrides: dict, sets: dict, data_dir: Path) -> dict:
    fixed = {n: getattr(tm, n) for n in PROBE_NAMES}
    print(
        f"[probe] OUTSIDE THE HARNESS'S FIXED BLOCK (a diagnostic, never a candidate): {fixed}, "
        f"recipe overrides {overrides or 'none'}, seed {a.seed}, data {data_dir}",
        flush=True,
    )
    work = a.out.with_name(a.out.stem + ".work")
    if work.exists():
        shutil.rmtree(work)
    heldout = make_candidate_data(data_dir, work / "data")
    refs = reference_losses(data_dir)
    env = {"TRAIN_MPS_DATA_DIR": str(work / "data"), "TRAIN_MPS_OUT_DIR": str(work / "out")}
    saved = {k: os.environ.get(k) for k in (*env, "TRAIN_MPS_SEED", "TRAIN_MPS_MAX_ITERS")}
    os.environ.update(env)
    for k in ("TRAIN_MPS_SEED", "TRAIN_MPS_MAX_ITERS"):  # the probe's settings, not the shell's
        os.environ.pop(k, None)
    t0 = time.perf_counter()
    try:
        best_vloss, elapsed_min = tm.train(recipe)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    train_min = (time.perf_counter() - t0) / 60
    import _study_common

    model, info = _study_common.load_checkpoint(work / "out" / "ckpt.pt")
    t1 = time.perf_counter()
    scores = scored(model, data_dir, heldout, refs)
    result = {
        "probe": "scripts/fixed_block_probe.py",
        "note": "outside the harness's fixed block: a diagnostic, never a candidate",
        "fixed": fixed,
        "set": sets,
        "recipe_overrides": overrides,
        "recipe": dataclasses.asdict(recipe),
        "model_args": info["model_args"],
        "seed": a.seed,
        "best_vloss": float(best_vloss),
        "elapsed_min": float(elapsed_min),
        "train_min": train_min,
        "scoring_s": time.perf_counter() - t1,
        **scores,
    }
    atomic_write_json(a.out, result)
    shutil.rmtree(work)
    report(result, a.out)
    return result


def scored(model, data_dir: Path, heldout: dict, refs: dict | None) -> dict:
    """What a probe and a control record alike: the runner's prefix scoring on the held-out half and on the
    candidate's half, and on a slice of train.bin as long as the held-out half (the text the model was fitted on,
    so that test - train is its generalization gap: a model too small to fit shows a high train slice; one that
    memorises, a low one and a wide gap), beside the Kneser-Ney rows on the same halves."""
    test, mine = heldout_halves(heldout)
    train = np.fromfile(data_dir / "train.bin", dtype=np.uint16)[: len(test)].astype(np.int64)
    kn = (refs or {}).get("kneser_ney", {})
    return {
        "data_dir": str(data_dir),
        "params": int(sum(p.numel() for p in model.parameters())),
        "trusted_test_loss": trusted_test_loss(model, test),
        "candidate_val_loss": trusted_test_loss(model, mine),
        "train_slice_loss": trusted_test_loss(model, train),
        "train_slice_tokens": len(train),
        "kneser_ney_heldout_test": kn.get("heldout_test"),
        "kneser_ney_candidate_val": kn.get("candidate_val"),
        "heldout": heldout,
        "environment": {"argv": sys.argv, "threads": os.environ.get("OMP_NUM_THREADS")},
    }


def report(result: dict, out: Path) -> None:
    best_kn = min((result.get("kneser_ney_heldout_test") or {}).values(), default=float("nan"))
    print(
        f"[probe] trusted test loss {result['trusted_test_loss']:.4f} (best Kneser-Ney {best_kn:.4f}), candidate "
        f"half {result['candidate_val_loss']:.4f}, train slice {result['train_slice_loss']:.4f}"
        + (f", best_vloss {result['best_vloss']:.4f}, {result['train_min']:.1f} min" if "train_min" in result else "")
        + f" -> {out}",
        flush=True,
    )


def score_checkpoint(a: argparse.Namespace, data_dir: Path) -> dict:
    """--ckpt: a finished run's checkpoint (a benchmark run of the same recipe and seed, the fixed block's values)
    scored as a probe is, beside the probes it controls for. Nothing is trained."""
    import _study_common

    model, info = _study_common.load_checkpoint(a.ckpt)
    result = {
        "probe": "scripts/fixed_block_probe.py --ckpt",
        "ckpt": str(a.ckpt),
        "fixed": info["fixed"],
        "recipe": info["recipe"],
        "model_args": info["model_args"],
        "seed": info["seed"],
        "best_vloss": info["best_vloss"],
        **scored(model, data_dir, heldout_split(data_dir), reference_losses(data_dir)),
    }
    atomic_write_json(a.out, result)
    report(result, a.out)
    return result


CONTROL = "control: the fixed block"


def what(r: dict) -> str:
    """What a probe changed ('n_embd=64'), or CONTROL: a control trained here or scored from a checkpoint."""
    return ", ".join(f"{k}={v}" for k, v in (r.get("set") or {}).items()) or CONTROL


def table(paths: list[Path]) -> str:
    """The probes' results side by side (markdown): what each changed, its figures, its gap between test and
    training text, and the best Kneser-Ney order on the same test half; controls first, then each probe's seeds.
    Under it, each probe's median over its seeds, and its paired differences against the control of the same seed
    (on the seeds that have one)."""
    rows = []
    for path in paths:
        try:
            r = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ProbeError(f"{path}: not a probe's JSON ({e})") from None
        if "trusted_test_loss" not in r:
            raise ProbeError(f"{path}: not a probe's JSON (no trusted_test_loss)")
        rows.append((Path(path), r))
    rows.sort(
        key=lambda pr: (
            what(pr[1]) != CONTROL,
            pr[1].get("params") or 0,
            what(pr[1]),
            pr[1].get("seed") or 0,
            str(pr[0]),
        )
    )
    lines = [
        "| probe | seed | params | trusted test loss | candidate half | train slice | test - train slice "
        "| best Kneser-Ney (n) | vs Kneser-Ney |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path, r in rows:
        label = what(r) + (" (a finished run's checkpoint)" if "ckpt" in r else "")
        n, best = best_kneser_ney(r)
        test, train = r["trusted_test_loss"], r.get("train_slice_loss", float("nan"))
        lines.append(
            f"| {label} (`{path.name}`) | {r.get('seed', '-')} | {r.get('params', '-'):,} | {test:.3f} "
            f"| {r['candidate_val_loss']:.3f} | {train:.3f} | {test - train:.3f} | {best:.3f} ({n}) "
            f"| {test - best:+.3f} |"
        )
    controls = {r.get("seed"): r for _, r in rows if what(r) == CONTROL}
    lines += [
        "",
        "| probe | seeds | trusted test loss, median | train slice, median | vs control, paired (seeds with one) "
        "| vs best Kneser-Ney, median |",
        "|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(what(r) for _, r in rows):
        mine = [r for _, r in rows if what(r) == name]
        test = statistics.median(r["trusted_test_loss"] for r in mine)
        train = statistics.median(r.get("train_slice_loss", float("nan")) for r in mine)
        paired = {
            r["seed"]: r["trusted_test_loss"] - controls[r["seed"]]["trusted_test_loss"]
            for r in mine
            if name != CONTROL and r.get("seed") in controls
        }
        vs_control = (
            f"{statistics.median(paired.values()):+.3f} ("
            + ", ".join(f"s{k} {v:+.3f}" for k, v in sorted(paired.items()))
            + ")"
            if paired
            else "-"
        )
        gap = statistics.median(r["trusted_test_loss"] - best_kneser_ney(r)[1] for r in mine)
        seeds = ", ".join(str(r.get("seed")) for r in mine)
        lines.append(f"| {name} | {seeds} | {test:.3f} | {train:.3f} | {vs_control} | {gap:+.3f} |")
    return "\n".join(lines) + "\n"


def best_kneser_ney(r: dict) -> tuple[int | str, float]:
    """(order, loss) of the best Kneser-Ney row on the probe's test half; ('-', nan) if it has none."""
    return kneser_ney.best_order(r.get("kneser_ney_heldout_test")) or ("-", float("nan"))


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=ROOT / "data" / "tinyshakespeare")
    p.add_argument("--set", action="append", default=[], metavar="NAME=INT", help=f"one of {', '.join(PROBE_NAMES)}")
    p.add_argument("--recipe", default="", help="train_mps.Recipe overrides, as in a benchmark spec: f=v,f=v")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="the result's JSON (with --table: the markdown table, else stdout)")
    p.add_argument("--table", nargs="+", type=Path, metavar="JSON", help="tabulate finished probes; runs nothing")
    p.add_argument("--force", action="store_true", help="run again over an existing --out")
    p.add_argument(
        "--ckpt",
        type=Path,
        help="score this finished run's checkpoint as a probe is (the control), training nothing; no --set/--recipe",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(list(sys.argv[1:] if argv is None else argv))
    if a.table:
        try:
            text = table(a.table)
        except ProbeError as e:
            print(f"[probe] error: {e}", file=sys.stderr, flush=True)
            return 2
        if a.out is not None:
            atomic_write_bytes(a.out, text.encode("utf-8"))
        print(text, end="", flush=True)
        return 0
    if a.out is None:
        print("[probe] error: --out is required (the result's JSON)", file=sys.stderr, flush=True)
        return 2
    if a.out.exists() and not a.force:
        print(f"[probe] {a.out} exists: kept (pass --force to run it again)", flush=True)
        return 0
    try:
        if a.ckpt is not None:
            if a.set or a.recipe:
                raise ProbeError("--ckpt scores a finished run as it is: drop --set and --recipe")
            if not a.ckpt.is_file():
                raise ProbeError(f"no checkpoint at {a.ckpt}")
            data_dir = checked_data_dir(a)
        else:
            setup = prepare(a)
    except (ProbeError, BenchmarkError) as e:
        print(f"[probe] error: {e}", file=sys.stderr, flush=True)
        return 2
    if a.ckpt is not None:
        score_checkpoint(a, data_dir)
    else:
        probe(a, *setup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
