"""What the benchmark's sandbox costs a run: start-up, scoring, and a whole shortened run, with and without it.

Three measurements, each alternating the two sides (`--repeats` times) so that drifts in machine load hit both:
  start-up   the wall time of `python -S -c pass` (bwrap's own cost) and of `python -c "import torch"` (what each
             child's start costs: a run starts three, one training and two scoring children), started directly and
             inside bubblewrap with a run's confinement;
  scoring    the per-target losses of both halves of a data set's validation split for one canonical model
             (freshly initialised: the cost does not depend on the weights): the runner's old in-process scoring
             (odegpt_eval.scoring.trusted_token_losses), the prefix protocol without a sandbox, and in bubblewrap;
  run        odegpt_eval.runs.execute_run of the canonical for `--iters` iterations under `none` and under bubblewrap:
             the runner's trusted time and the run's wall time (training, export, scoring).

Prints the environment first; writes JSON (default results/bench_sandbox.json), each part as it ends, with the
environment it was measured in (`--parts` measures some again and keeps the others).

    python scripts/bench_sandbox.py --data-dir data/tinyshakespeare
    python scripts/bench_sandbox.py --data-dir data/tinyshakespeare --repeats 1 --iters 20   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from odegpt_eval import sandbox as sb  # noqa: E402
from odegpt_eval import scoring  # noqa: E402
from odegpt_eval.files import atomic_write_json  # noqa: E402
from odegpt_eval.runs import THREAD_VARS, execute_run  # noqa: E402
from odegpt_eval.scoring import trusted_token_losses  # noqa: E402
from odegpt_eval.specs import SOURCE_FILES, Config  # noqa: E402
from odegpt_eval.splits import heldout_halves, heldout_split  # noqa: E402


def environment(data_dir: Path) -> dict:
    import torch

    box = sb.Bubblewrap()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "thread_env": {k: os.environ[k] for k in THREAD_VARS if k in os.environ},
        "sandbox": box.describe(),
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "data_dir": str(data_dir),
    }


def startup(repeats: int) -> dict:
    """`python -S -c pass` (what bwrap itself costs) and `python -c "import torch"` (what a child's start costs)."""
    box = sb.Confinement(read_only=tuple(sb.python_paths()), env=tuple(sb.base_env().items()))
    out = {}
    for what, argv in (
        ("bare", [sys.executable, "-S", "-c", "pass"]),
        ("torch", [sys.executable, "-c", "import torch"]),
    ):
        times: dict[str, list] = {"direct": [], "bubblewrap": []}
        for _ in range(repeats * (5 if what == "bare" else 1)):
            for side in times:
                t = time.perf_counter()
                proc = sb.Bubblewrap().start(argv, box) if side == "bubblewrap" else subprocess.Popen(argv)
                if proc.wait() != 0:
                    raise SystemExit(f"{argv} failed {side}")
                times[side].append(time.perf_counter() - t)
        out[what] = {k: {"median_s": statistics.median(v), "runs_s": v} for k, v in times.items()}
    return out


def score_once(side: str, model, model_py: Path, weights: Path, halves: dict, work: Path) -> float:
    t = time.perf_counter()
    if side == "in_process":
        for tokens in halves.values():
            trusted_token_losses(model, tokens)
    else:
        box = sb.NoSandbox() if side == "protocol_none" else sb.Bubblewrap()
        scoring.score(box, model_py, weights, type(model).__module__, "cpu", threads(), halves, 64, work / "score.log")
    return time.perf_counter() - t


def threads() -> int:
    return int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))


def scoring_cost(data_dir: Path, repeats: int, work: Path) -> dict:
    import numpy as np
    import torch

    import train_mps

    heldout = heldout_split(data_dir)
    test, mine = heldout_halves(heldout)
    torch.manual_seed(0)
    model = train_mps.make_model(train_mps.Recipe(), np.fromfile(data_dir / "train.bin", dtype=np.uint16)).eval()
    weights = work / "model.pt"
    torch.save(model, weights)
    halves = {"test": test, "candidate_val": mine}
    times: dict[str, list] = {"in_process": [], "protocol_none": [], "protocol_bubblewrap": []}
    for _ in range(repeats):
        for side in times:
            times[side].append(score_once(side, model, ROOT / "model.py", weights, halves, work))
    calls = sum(len(scoring.plan_calls(h, len(scoring.windows_of(t, 64)), 64)) for h, t in halves.items())
    out = {k: {"median_s": statistics.median(v), "runs_s": v} for k, v in times.items()}
    return {**out, "windows": heldout["test_windows"], "calls": calls + 2 * scoring.AUDIT_CALLS}


def whole_run(data_dir: Path, iters: int, repeats: int, work: Path) -> dict:
    out = work / "runs"
    snapshot = out / "sources" / "canonical"
    snapshot.mkdir(parents=True)
    for f in SOURCE_FILES:
        shutil.copy(ROOT / f, snapshot / f)
    config = Config("canonical", "builtin", str(ROOT), "canonical", None)
    sides: dict[str, list] = {"none": [], "bubblewrap": []}
    for i in range(repeats):
        for side in sides:
            box = sb.NoSandbox() if side == "none" else sb.Bubblewrap()
            r = execute_run(config, i, 0, out, data_dir, iters, sandbox=box)
            if r["status"] != "ok" or r["violations"]:
                raise SystemExit(f"the {side} run failed: {r.get('error') or r['violations']}")
            keys = ("trusted_elapsed_min", "trusted_train_span_min", "trusted_scoring_s", "wall_s", "trusted_test_loss")
            sides[side].append({k: r[k] for k in keys})
    summary = {}
    for side, runs in sides.items():
        summary[side] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        summary[side]["runs"] = runs
    summary["same_trusted_test_loss"] = [
        a["trusted_test_loss"] == b["trusted_test_loss"] for a, b in zip(*sides.values())
    ]
    return {"iters": iters, **summary}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=ROOT / "data" / "tinyshakespeare")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--iters", type=int, default=50, help="iterations of each whole run (0: no whole runs)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench_sandbox.json")
    p.add_argument(
        "--parts",
        nargs="+",
        choices=("startup", "scoring", "run"),
        default=["startup", "scoring", "run"],
        help="what to measure (the others are kept as --out has them)",
    )
    a = p.parse_args(argv)
    if not (a.data_dir / "val.bin").is_file():
        raise SystemExit(f"no val.bin in {a.data_dir}: make data-tinyshakespeare, or pass --data-dir")
    why = sb.Bubblewrap().available()
    if why:
        raise SystemExit(f"bubblewrap is not usable here: {why}")
    env = environment(a.data_dir.resolve())
    print(json.dumps(env, indent=1), flush=True)
    result = json.loads(a.out.read_text()) if a.out.is_file() else {}
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as tmp:
        work = Path(tmp)
        for part in a.parts:  # each part saved as it ends, beside the environment it was measured in
            if part == "startup":
                result["startup"] = startup(a.repeats)
            elif part == "scoring":
                result["scoring"] = scoring_cost(a.data_dir.resolve(), a.repeats, work)
            elif a.iters:
                result["run"] = whole_run(a.data_dir.resolve(), a.iters, a.repeats, work)
            result.setdefault("environments", {})[part] = env
            result.pop("environment", None)
            print(part, json.dumps(result.get(part)), flush=True)
            atomic_write_json(a.out, result)
    print(f"wrote {a.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
