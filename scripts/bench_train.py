"""Time per iteration of train() itself, side by side: what a harness pays for each iteration of a configuration.

Each configuration's train() runs in a fresh subprocess (as a harness runs it: data loading, model and optimizer
set-up, evaluations every eval_interval, the EMA, all of it) at two lengths, --short and --long iterations; the
difference of the two returned elapsed_min over the difference of the lengths is the time per iteration, set-up cut
out, evaluations in at their share (train() evaluates at every multiple of eval_interval). Repeats interleave the
configurations (A B C, A B C, ...) so that drifts in the machine's load hit each alike, and each repeat's ratio to the
first configuration is taken within the repeat; the report gives the median time and the median ratio.

    python scripts/bench_train.py --configs baseline canonical --repeats 5          # ~25 min on one CPU thread
    python scripts/bench_train.py --configs baseline canonical --threads 2 --out results/bench_train_2threads.json

Writes JSON (atomic) and prints a table. Configurations are scripts/bench_integrators.py's (baseline, canonical,
canonical:FIELD=VALUE,...; SOLVER/SPLITTING/STEPS), of this checkout's train_mps.py, or of another checkout's when
written CHECKOUT::SPEC (e.g. a worktree of an earlier commit: `git worktree add ../before HEAD~1`, then
`../before::canonical`), so that a change is timed against the code before it. Needs the training data: train_mps
finds it as usual, or --data-dir names the folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import bench_integrators  # noqa: E402  (the spec syntax)

CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
import train_mps
fields = json.loads(sys.argv[2])
if set(fields) - set(train_mps.Recipe.__dataclass_fields__):  # a lever's field: levers.py, beside the two files
    import levers
    best, minutes = levers.train(levers.LeverRecipe(**fields))
else:
    best, minutes = train_mps.train(train_mps.Recipe(**fields))
print("BENCH_TRAIN " + json.dumps({"elapsed_min": minutes, "best_vloss": best}))
"""


def parse(name: str) -> tuple[Path, dict]:
    """CHECKOUT::SPEC or SPEC -> (the folder holding train_mps.py, the Recipe fields)."""
    root, _, spec = name.rpartition("::")
    root = Path(root).resolve() if root else ROOT
    if not (root / "train_mps.py").is_file():
        raise SystemExit(f"error: config {name!r}: no train_mps.py in {root}")
    return root, bench_integrators.parse_config(spec)


def run_train(root: Path, fields: dict, iters: int, data_dir: Path | None, threads: int) -> float:
    """elapsed_min of one train() of `iters` iterations in a fresh process."""
    with tempfile.TemporaryDirectory(prefix="bench_train-") as out:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRAIN_MPS_")}
        env.update(TRAIN_MPS_MAX_ITERS=str(iters), TRAIN_MPS_OUT_DIR=out, OMP_NUM_THREADS=str(threads))
        env["MKL_NUM_THREADS"] = str(threads)
        if data_dir is not None:
            env["TRAIN_MPS_DATA_DIR"] = str(data_dir)
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(root), json.dumps(fields)], env=env, capture_output=True, text=True
        )
    if proc.returncode != 0:
        raise SystemExit(f"error: train() of {fields} failed:\n{proc.stderr[-3000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_TRAIN "))
    return json.loads(line.split(" ", 1)[1])["elapsed_min"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=["baseline", "canonical"], help="first = reference")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--short", type=int, default=51, help="iterations of the short run")
    p.add_argument("--long", type=int, default=251, help="iterations of the long run")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each run (the runs go one at a time)")
    p.add_argument("--data-dir", type=Path, help="the folder holding train.bin/val.bin (else train_mps finds it)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench_train.json")
    a = p.parse_args(argv)
    if a.repeats < 1 or not 1 <= a.short < a.long:
        raise SystemExit("error: --repeats must be >= 1 and 1 <= --short < --long")
    parsed = {name: parse(name) for name in a.configs}
    ms = {name: [] for name in a.configs}
    ratios = {name: [] for name in a.configs}
    print(
        f"[bench_train] {len(a.configs)} configurations, train() at {a.short} and {a.long} iterations, "
        f"{a.threads} thread(s), {a.repeats} interleaved repeats",
        flush=True,
    )

    def report(done: int) -> dict:
        """The result after `done` repeats (written after each, so an interrupted benchmark keeps what it measured)."""
        return {
            "environment": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpu_count": os.cpu_count(),
                "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
            },
            "measured": "ms per iteration of train() = (elapsed_min(long) - elapsed_min(short)) / (long - short)",
            "short": a.short,
            "long": a.long,
            "threads": a.threads,
            "repeats": done,
            "repeats_planned": a.repeats,
            "configs": [
                {
                    "name": n,
                    "ms": ms[n],
                    "median_ms": statistics.median(ms[n]),
                    "ratios": ratios[n],
                    "median_ratio": statistics.median(ratios[n]),
                    "checkout": str(parsed[n][0]),
                    "overrides": parsed[n][1],
                }
                for n in a.configs
            ],
        }

    for rep in range(a.repeats):
        for name in a.configs:
            short = run_train(*parsed[name], a.short, a.data_dir, a.threads)
            long = run_train(*parsed[name], a.long, a.data_dir, a.threads)
            ms[name].append(60_000 * (long - short) / (a.long - a.short))
        for name in a.configs:
            ratios[name].append(ms[name][-1] / ms[a.configs[0]][-1])
        result = report(rep + 1)
        bench_integrators.atomic_write_text(a.out, json.dumps(result, indent=1))
        print(f"repeat {rep + 1}/{a.repeats}: " + " | ".join(f"{n} {ms[n][-1]:.1f} ms" for n in a.configs), flush=True)
    print(f"{'config':<60} {'ms/iter':>8} {'ratio':>6}")
    for c in result["configs"]:
        print(f"{c['name']:<60} {c['median_ms']:>8.1f} {c['median_ratio']:>6.3f}")
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
