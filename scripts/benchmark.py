"""Benchmark training configurations side by side: interleaved, one fresh subprocess per run, N seeds.

Each configuration is a folder holding `model.py` + `train_mps.py`, trained exactly as the harness trains a
candidate: a fresh Python process puts the folder first on sys.path, imports `train_mps` and calls `train()`
(with a `Recipe` override for the built-in recipes). Runs are interleaved per seed (seed 0: A, B, C; seed 1:
A, B, C; ...) on the same data and machine, so drifts in machine load hit every configuration alike.
`--jobs N` runs N at a time in that order (the cores shared out evenly): the losses are those of a run
alone; the times are contended, alike for every configuration, so compare them as ratios only.

Configurations (`--configs`):
  baseline                       the seeds' starting point (BASELINE_RECIPE below) on the canonical files
  canonical                      train_mps.py as it stands, train() with no arguments
  canonical:FIELD=VALUE,...      canonical with Recipe fields overridden (for ablations)
  path/to/folder                 a candidate folder; refused unless scripts/check_constraints.py passes

The canonical files and every candidate's two files are copied into `<out>/sources/` when the benchmark
starts (what the harness does), so edits to the working tree during a benchmark of hours cannot mix two
versions of a recipe in one table; `--resume` reuses those copies.

Reports per configuration best_vloss, whole-split val loss, elapsed_min (as train() returned it), the
subprocess wall time and fitness = best_vloss + 0.01 * elapsed_min: median, mean +- std over seeds, and the
per-seed paired differences against the baseline configuration with their median.

Outputs under --out (default results/benchmark/<timestamp>), each written atomically:
  benchmark.json   environment, settings, order, every run's record with its full metrics.json, summary
  benchmark.md     the tables
  benchmark.png    val loss vs iteration, one colour per configuration, the median over seeds bold
  runs/<config>/seed<k>/   train.log, metrics.json, ckpt.pt and run.json (the record, saved when the run ends)

    python scripts/benchmark.py --configs baseline canonical                      # 3 seeds, full runs: hours
    python scripts/benchmark.py --configs canonical canonical:ema_decay=0.999,schedule=wsd path/to/cand --seeds 0 1 2 3
    python scripts/benchmark.py --configs baseline canonical --seeds 0 1 --max-iters 200   # smoke (SHORTENED)
    python scripts/benchmark.py --configs canonical canonical:optimizer=muon --jobs 2   # two runs at once, 1 thread each
    python scripts/benchmark.py --out results/benchmark/X --resume    # finish an interrupted benchmark
    python scripts/benchmark.py --out results/benchmark/X --plot-only # redraw benchmark.md/.png from the JSON
    python scripts/benchmark.py --merge results/benchmark/A@baseline results/benchmark/B --configs baseline canonical \
        --out results/benchmark/AB      # one report from runs made in several benchmarks (e.g. side by side)
    python scripts/benchmark.py --merge results/benchmark/A --relabel canonical:ema_decay=0.999 canonical \
        --out results/benchmark/A2      # runs made before that became the default, reported under today's name
    python scripts/benchmark.py --merge results/benchmark/A results/benchmark/screen --seeds 0 \
        --out results/benchmark/S       # a one-seed screen beside seed 0 of a three-seed benchmark

Exit status: 0 all runs finished, 1 some run failed (recorded; the others go on), 2 a usage or input error
(nothing ran).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import importlib.util
import io
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import typing
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
DEFAULT_DATA_DIR = ROOT / "data" / "shakespeare"
DEFAULT_OUT_ROOT = ROOT / "results" / "benchmark"
SOURCE_FILES = ("model.py", "train_mps.py")
TIME_WEIGHT = 0.01  # fitness = best_vloss + TIME_WEIGHT * elapsed_min
METRICS = ("best_vloss", "val_loss_full", "elapsed_min", "wall_min", "fitness")
METRIC_TITLES = {
    "best_vloss": "best_vloss",
    "val_loss_full": "whole-split val",
    "elapsed_min": "elapsed_min",
    "wall_min": "wall min",
    "fitness": "fitness",
}
BUILTIN_SOURCE = "canonical"  # the snapshot folder shared by baseline, canonical and canonical:...

# The seeds' starting point, the one place its values live: plain pre-LN GPT (euler, one step, lie
# splitting), nanoGPT's init with tied embeddings, vocab 50304, no bias, dropout 0; AdamW lr 3e-4, betas
# (0.9, 0.95), weight decay 0.1 on >= 2-D parameters, clipping at 1.0, a constant learning rate, no warmup,
# no EMA. Every Recipe field but the seed is pinned (a test checks), so a change of the canonical defaults
# cannot move the baseline; muon_lr and decay_frac are unused under adamw / constant.
BASELINE_RECIPE = dict(
    vocab_size=50304,
    bias=False,
    dropout=0.0,
    solver="euler",
    steps_per_layer=1,
    splitting="lie",
    zero_init_proj=False,
    shortlist=False,
    kinetic_energy=0.0,
    jacobian_frobenius=0.0,
    optimizer="adamw",
    learning_rate=3e-4,
    muon_lr=0.02,
    min_lr=3e-4,
    schedule="constant",
    warmup_iters=0,
    decay_frac=0.2,
    weight_decay=0.1,
    beta1=0.9,
    beta2=0.95,
    grad_clip=1.0,
    ema_decay=0.0,
    select_window=0,
)

# Runs in the fresh subprocess: the harness's import, then the returned value to a JSON file.
RUNNER = r"""
import json, sys
folder, overrides, result_path = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
sys.path.insert(0, folder)
import train_mps
result = train_mps.train() if overrides is None else train_mps.train(train_mps.Recipe(**overrides))
ok = type(result) is tuple and len(result) == 2 and all(isinstance(v, float) for v in result)
with open(result_path, "w") as f:
    json.dump({"returned": list(result) if ok else repr(result), "module_file": train_mps.__file__}, f)
sys.exit(0 if ok else 3)
"""


class BenchmarkError(RuntimeError):
    """A usage or input error found before anything runs; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class Config:
    label: str  # as given on the command line
    kind: str  # "builtin" | "folder"
    origin: str  # where the two files come from
    snapshot: str  # name of the copy under <out>/sources/
    overrides: dict | None  # Recipe fields for train(Recipe(**overrides)); None: train() with no arguments


# ---------------------------------------------------------------------------------------------
# small helpers


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder, then os.replace: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def slug(label: str) -> str:
    """A folder name for a label; a short hash keeps two labels that clean up alike apart."""
    s = re.sub(r"[^A-Za-z0-9._=+-]+", "_", label).strip("_.")[:80] or "config"
    return s if s == label else f"{s}-{hashlib.sha1(label.encode()).hexdigest()[:6]}"


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def canonical_train_mps():
    """The repo's train_mps module (for Recipe's fields and the fixed block); importing it has no side effects."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import train_mps

    return train_mps


# ---------------------------------------------------------------------------------------------
# configurations


def parse_value(field: str, text: str, kind):
    """A Recipe field's value from text, by the field's type."""
    try:
        if kind is bool:
            low = text.strip().lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is str:
            return text
    except ValueError as e:
        raise BenchmarkError(f"Recipe field {field!r} is {kind.__name__}; cannot parse {text!r} ({e})") from None
    raise BenchmarkError(f"Recipe field {field!r} has type {kind!r}, which the command line cannot express")


def parse_overrides(text: str, recipe_cls) -> dict:
    """`field=value,field=value` -> {field: typed value}, validated against recipe_cls's fields."""
    types = typing.get_type_hints(recipe_cls)
    valid = [f.name for f in dataclasses.fields(recipe_cls) if f.name != "seed"]
    out: dict = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BenchmarkError(f"expected FIELD=VALUE, got {item!r} in {text!r}")
        if key == "seed":
            raise BenchmarkError("the seed is not a recipe override; pass the seeds with --seeds")
        if key not in types:
            raise BenchmarkError(f"unknown Recipe field {key!r} in {text!r}; valid fields: {', '.join(valid)}")
        if key in out:
            raise BenchmarkError(f"Recipe field {key!r} given twice in {text!r}")
        out[key] = parse_value(key, value.strip(), types[key])
    return out


def parse_config(spec: str, recipe_cls) -> Config:
    """A --configs entry: baseline, canonical, canonical:field=value,... or a candidate folder."""
    canonical = str(ROOT)
    if spec == "baseline":
        fields = {f.name for f in dataclasses.fields(recipe_cls)}
        missing = sorted(set(BASELINE_RECIPE) - fields)
        if missing:
            raise BenchmarkError(f"BASELINE_RECIPE names fields Recipe no longer has: {', '.join(missing)}")
        return Config(spec, "builtin", canonical, BUILTIN_SOURCE, dict(BASELINE_RECIPE))
    if spec == "canonical":
        return Config(spec, "builtin", canonical, BUILTIN_SOURCE, None)
    if spec.startswith("canonical:"):
        return Config(
            spec, "builtin", canonical, BUILTIN_SOURCE, parse_overrides(spec[len("canonical:") :], recipe_cls)
        )
    folder = Path(spec)
    if not folder.is_dir():
        raise BenchmarkError(
            f"configuration {spec!r} is neither a built-in (baseline, canonical, canonical:FIELD=VALUE,...) "
            "nor a folder"
        )
    missing = [f for f in SOURCE_FILES if not (folder / f).is_file()]
    if missing:
        raise BenchmarkError(f"candidate folder {spec!r} lacks {', '.join(missing)}")
    return Config(spec, "folder", str(folder.resolve()), f"folder-{slug(spec)}", None)


def recipe_drift(label: str, recorded: dict, recipe_cls) -> dict:
    """Where a built-in label no longer means the Recipe its run recorded (metrics' `recipe`), e.g. after a
    default changed: {field: (today's value, recorded value)}. Fields the run predates are skipped; {} for
    candidate folders and names that are not built-ins (nothing to compare)."""
    if label != "baseline" and label != "canonical" and not label.startswith("canonical:"):
        return {}
    overrides = parse_config(label, recipe_cls).overrides or {}
    today = dataclasses.asdict(recipe_cls(**{**overrides, "seed": recorded.get("seed", 0)}))
    return {k: (today[k], v) for k, v in recorded.items() if k in today and today[k] != v}


def check_train_mps(source: str, filename: str) -> list[str]:
    """scripts/check_constraints.py on one train_mps.py: the violations as `path:line: RULE: message`."""
    checker = load_module("_benchmark_check_constraints", SCRIPTS / "check_constraints.py")
    try:
        violations = checker.check(source, filename=filename)
    except SyntaxError as e:
        return [f"{filename}:{e.lineno}: syntax error: {e.msg}"]
    return [f"{filename}:{v.line if v.line is not None else '-'}: {v.rule}: {v.message}" for v in violations]


def source_texts(config: Config, out: Path, resume: bool) -> tuple[dict[str, bytes], bool]:
    """The two files a configuration trains with: on --resume the saved copy if there is one, else the origin."""
    snap = out / "sources" / config.snapshot
    use_snapshot = resume and all((snap / f).is_file() for f in SOURCE_FILES)
    folder = snap if use_snapshot else Path(config.origin)
    return {f: (folder / f).read_bytes() for f in SOURCE_FILES}, use_snapshot


# ---------------------------------------------------------------------------------------------
# environment


def git_state() -> dict:
    def git(*args):
        proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)
        return proc.stdout.strip() if proc.returncode == 0 else None

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--", *SOURCE_FILES)
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty_sources": None}
    return {"git_commit": commit, "git_dirty_sources": bool(dirty) if dirty is not None else None}


def environment(argv: list[str], data_dir: Path) -> dict:
    import numpy as np
    import torch

    env = {
        "started_at": datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
        **git_state(),
        "command": shlex.join([sys.executable, str(Path(__file__).resolve()), *argv]),
        "cwd": os.getcwd(),
        "data": {
            "dir": str(data_dir),
            **{
                name: {"bytes": (data_dir / name).stat().st_size, "sha256": sha256(data_dir / name)}
                for name in ("train.bin", "val.bin")
                if (data_dir / name).exists()
            },
        },
    }
    return env


REFERENCE_ORDERS = (2, 3, 4, 5)


def reference_losses(data_dir: Path) -> dict | None:
    """The count-based reference row of every loss table: interpolated modified Kneser-Ney n-grams fitted on
    the benchmark's train.bin, scored under full_split_loss's protocol (scripts/kneser_ney.py; seconds).
    None, with a note, where the data is not there to fit (a merge of runs made elsewhere)."""
    import kneser_ney
    import numpy as np

    if not ((data_dir / "train.bin").exists() and (data_dir / "val.bin").exists()):
        print(f"[benchmark] no train.bin/val.bin in {data_dir}: no Kneser-Ney reference row", flush=True)
        return None
    train = np.fromfile(data_dir / "train.bin", dtype=np.uint16)
    val = np.fromfile(data_dir / "val.bin", dtype=np.uint16)
    full = kneser_ney.fit(train, max(REFERENCE_ORDERS), kneser_ney.VOCAB_SIZE)
    losses = {n: kneser_ney.whole_split_loss(full.with_order(n), val) for n in REFERENCE_ORDERS}
    print(
        "[benchmark] reference, Kneser-Ney whole-split val: " + ", ".join(f"n={n} {v:.4f}" for n, v in losses.items()),
        flush=True,
    )
    return {
        "kneser_ney": {"whole_split_val": {str(n): v for n, v in losses.items()}, "script": "scripts/kneser_ney.py"}
    }


def print_environment(env: dict) -> None:
    print("[benchmark] environment", flush=True)
    for k, v in env.items():
        print(f"  {k:18} {v}", flush=True)


# ---------------------------------------------------------------------------------------------
# runs


def run_dir(out: Path, label: str, seed: int) -> Path:
    return out / "runs" / slug(label) / f"seed{seed}"


def run_identity(config: Config, seed: int, max_iters, data_dir: Path) -> dict:
    """What a finished run must match for --resume to keep it."""
    return {
        "config": config.label,
        "seed": seed,
        "recipe_overrides": config.overrides,
        "max_iters": max_iters,
        "data_dir": str(data_dir),
    }


def load_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def finished(record: dict | None) -> bool:
    return bool(record) and record.get("status") == "ok"


def fitness(best_vloss: float, elapsed_min: float) -> float:
    return best_vloss + TIME_WEIGHT * elapsed_min


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def threads_per_run(jobs: int) -> dict[str, str]:
    """The thread settings of each run when `jobs` run at once: the cores shared out evenly, unless the
    environment already sets them (then they are kept as they are)."""
    if jobs <= 1 or any(k in os.environ for k in THREAD_VARS):
        return {}
    n = str(max(1, (os.cpu_count() or 1) // jobs))
    return {k: n for k in THREAD_VARS}


def execute_run(
    config: Config, seed: int, index: int, out: Path, data_dir: Path, max_iters, threads: dict[str, str] | None = None
) -> dict:
    """One training run in a fresh subprocess; returns its record (also saved as run.json). `threads`: thread
    variables for the subprocess (threads_per_run)."""
    rdir = run_dir(out, config.label, seed)
    if rdir.exists():  # leftovers of a failed or interrupted attempt
        shutil.rmtree(rdir)
    rdir.mkdir(parents=True)
    source = out / "sources" / config.snapshot
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAIN_MPS_") and k != "PYTHONPATH"}
    env.update(TRAIN_MPS_SEED=str(seed), TRAIN_MPS_OUT_DIR=str(rdir), TRAIN_MPS_DATA_DIR=str(data_dir))
    env.update(threads or {})
    if max_iters is not None:
        env["TRAIN_MPS_MAX_ITERS"] = str(max_iters)
    result_path = rdir / "returned.json"
    log_path = rdir / "train.log"
    cmd = [sys.executable, "-c", RUNNER, str(source), json.dumps(config.overrides), str(result_path)]
    started = datetime.now().isoformat(timespec="milliseconds")
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=rdir)
    wall_s = time.perf_counter() - t0
    record = {
        **run_identity(config, seed, max_iters, data_dir),
        "order_index": index,
        "status": "failed",
        "returncode": proc.returncode,
        "started_at": started,
        "finished_at": datetime.now().isoformat(timespec="milliseconds"),
        "wall_s": wall_s,
        "wall_min": wall_s / 60.0,
        "source_dir": str(source),
        "sources_sha256": {f: sha256(source / f) for f in SOURCE_FILES},
        "log": str(log_path.relative_to(out)),
        "thread_env": {k: env[k] for k in THREAD_VARS if k in env},
        "warnings": [],
    }
    returned = load_record(result_path)
    metrics = load_record(rdir / "metrics.json")
    record["metrics"] = metrics
    if proc.returncode == 0 and returned and isinstance(returned.get("returned"), list):
        best_vloss, elapsed_min = returned["returned"]
        record.update(
            status="ok",
            best_vloss=best_vloss,
            elapsed_min=elapsed_min,
            val_loss_full=(metrics or {}).get("val_loss_full"),
            fitness=fitness(best_vloss, elapsed_min),
        )
        if not returned.get("module_file", "").startswith(str(source)):
            record["warnings"].append(f"train_mps was imported from {returned.get('module_file')}, not {source}")
        if metrics is None:
            record["warnings"].append("no metrics.json in TRAIN_MPS_OUT_DIR: no whole-split val, no curve")
        elif metrics.get("seed") != seed:
            record["warnings"].append(f"metrics.json says seed {metrics.get('seed')}, not {seed}")
    else:
        record["error"] = (returned or {}).get("returned") or tail(log_path)
    atomic_write_json(rdir / "run.json", record)
    return record


# ---------------------------------------------------------------------------------------------
# summary


def describe(values: list) -> dict:
    vals = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return {
        "n": len(vals),
        "median": statistics.median(vals) if vals else None,
        "mean": statistics.fmean(vals) if vals else None,
        "std": statistics.stdev(vals) if len(vals) >= 2 else None,
    }


def summarize(runs: list[dict], labels: list[str], baseline: str) -> dict:
    """Per configuration: each metric over seeds; per seed differences against the baseline."""
    ok = {(r["config"], r["seed"]): r for r in runs if r.get("status") == "ok"}
    configs = {}
    for label in labels:
        mine = sorted((r for (c, _), r in ok.items() if c == label), key=lambda r: r["seed"])
        entry = {"n": len(mine), "seeds": [r["seed"] for r in mine]}
        for m in METRICS:
            values = [r.get(m) for r in mine]
            entry[m] = {"values": values, **describe(values)}
        if label != baseline:
            paired = {}
            for m in METRICS:
                seeds, diffs = [], []
                for r in mine:
                    b = ok.get((baseline, r["seed"]))
                    if b is not None and r.get(m) is not None and b.get(m) is not None:
                        seeds.append(r["seed"])
                        diffs.append(r[m] - b[m])
                paired[m] = {"seeds": seeds, "diffs": diffs, **describe(diffs), "n_lower": sum(d < 0 for d in diffs)}
            entry["paired_vs_baseline"] = paired
        configs[label] = entry
    return {
        "baseline": baseline,
        "fitness": f"best_vloss + {TIME_WEIGHT} * elapsed_min",
        "paired": "configuration - baseline on the same seed; negative = lower = better",
        "configs": configs,
    }


# ---------------------------------------------------------------------------------------------
# reports (from the JSON alone)


def shortened_banner(report: dict) -> str | None:
    s = report["settings"]
    if s.get("max_iters") is None:
        return None
    return (
        f"SHORTENED RUNS: TRAIN_MPS_MAX_ITERS={s['max_iters']} instead of the fixed {s.get('fixed_max_iters')} "
        "iterations. A smoke test: these numbers say nothing about the full recipes."
    )


def fmt(x, digits=4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def fmt_pm(d: dict, digits=4) -> str:
    if d.get("mean") is None:
        return "n/a"
    return f"{d['mean']:.{digits}f} ± {fmt(d.get('std'), digits)}"


def md_cell(text) -> str:
    return str(text).replace("|", "\\|")


def render_markdown(report: dict) -> str:
    s, summary = report["settings"], report["summary"]
    labels, baseline = s["configs"], summary["baseline"]
    lines = [f"# Benchmark: {', '.join(f'`{md_cell(c)}`' for c in labels)}", ""]
    banner = shortened_banner(report)
    if banner:
        lines += [f"> **⚠⚠ {banner} ⚠⚠**", ""]
    n_ok = sum(r.get("status") == "ok" for r in report["runs"])
    how = (
        "runs merged from separate benchmarks (listed below)"
        if report.get("merged_from")
        else "runs interleaved per seed (A B … A B …)"
        + (f", {s['jobs']} at a time (times contended alike)" if s.get("jobs", 1) > 1 else "")
    )
    lines += [
        f"Seeds {', '.join(map(str, s['seeds']))}; {how}, each in a fresh "
        f"subprocess; {n_ok} of {len(report['order'])} runs finished{'' if report.get('complete') else ' (INCOMPLETE)'}. "
        f"fitness = {summary['fitness']}. Lower is better everywhere. Cells: median (mean ± std) over seeds.",
        "",
        "| configuration | n | " + " | ".join(METRIC_TITLES[m] for m in METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    for label in labels:
        c = summary["configs"][label]
        cells = [f"`{md_cell(label)}`", str(c["n"])]
        for m in METRICS:
            digits = 2 if m in ("elapsed_min", "wall_min") else 4
            cells.append(f"{fmt(c[m]['median'], digits)} ({fmt_pm(c[m], digits)})")
        lines.append("| " + " | ".join(cells) + " |")
    kn = (report.get("references") or {}).get("kneser_ney")
    if kn:
        row = ", ".join(f"n={n} {fmt(v)}" for n, v in kn["whole_split_val"].items())
        best = min(kn["whole_split_val"].values())
        lines += [
            "",
            f"Reference, not a model: an interpolated modified Kneser-Ney n-gram fitted on the same train.bin "
            f"(`{kn['script']}`), whole-split val {row}; best **{fmt(best)}**.",
        ]
    paired_metrics = ("best_vloss", "val_loss_full", "fitness", "elapsed_min")
    lines += [
        "",
        f"## Paired differences against `{md_cell(baseline)}`",
        "",
        "Configuration minus baseline on the same seed (negative = better); median, then the per-seed values; "
        "'lower' counts the seeds on which the configuration's fitness is lower.",
        "",
        "| configuration | "
        + " | ".join(f"Δ {METRIC_TITLES[m]} median | per seed" for m in paired_metrics)
        + " | lower |",
        "|---|" + "---|---|" * len(paired_metrics) + "---|",
    ]
    for label in labels:
        p = summary["configs"][label].get("paired_vs_baseline")
        if p is None:
            continue
        cells = [f"`{md_cell(label)}`"]
        for m in paired_metrics:
            digits = 2 if m == "elapsed_min" else 4
            per_seed = ", ".join(f"s{sd}: {d:+.{digits}f}" for sd, d in zip(p[m]["seeds"], p[m]["diffs"]))
            cells += [fmt(p[m]["median"], digits) if p[m]["median"] is None else f"{p[m]['median']:+.{digits}f}"]
            cells += [per_seed or "n/a"]
        cells.append(f"{p['fitness']['n_lower']}/{len(p['fitness']['diffs'])}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Runs (in execution order)",
        "",
        "| # | configuration | seed | status | best_vloss | whole-split val | elapsed_min | wall min | fitness |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by_key = {(r["config"], r["seed"]): r for r in report["runs"]}
    for o in report["order"]:
        r = by_key.get((o["config"], o["seed"]), {})
        lines.append(
            f"| {o['index']} | `{md_cell(o['config'])}` | {o['seed']} | {r.get('status', 'pending')} | "
            f"{fmt(r.get('best_vloss'))} | {fmt(r.get('val_loss_full'))} | {fmt(r.get('elapsed_min'), 2)} | "
            f"{fmt(r.get('wall_min'), 2)} | {fmt(r.get('fitness'))} |"
        )
    warnings = [(r["config"], r["seed"], w) for r in report["runs"] for w in r.get("warnings", [])]
    if warnings:
        lines += ["", "Warnings:", ""] + [f"- `{md_cell(c)}` seed {sd}: {w}" for c, sd, w in warnings]
    if report.get("merged_from"):
        lines += ["", "Merged from (runs made in separate benchmarks):", ""]
        lines += [f"- `{md_cell(m['dir'])}`: {', '.join(m['runs']) or 'none'}" for m in report["merged_from"]]
        lines += [f"- WARNING: {w}" for w in report.get("merge_warnings", [])]
        lines += [
            f"- runs labelled `{md_cell(k)}` in those folders reported as `{md_cell(v)}` (each run keeps its `recorded_config`)"
            for k, v in report.get("relabeled", {}).items()
        ]
    env = report["environment"]
    lines += ["", "## Environment", ""]
    lines += [f"- {k}: `{md_cell(env[k])}`" for k in env if k != "data"]
    lines += [f"- data: `{md_cell(json.dumps(env.get('data')))}`"]
    for d in s.get("config_details", []):
        lines.append(
            f"- `{md_cell(d['label'])}`: {d['kind']} from `{md_cell(d['origin'])}`, overrides `{d['overrides']}`"
            + (f" (recorded as `{md_cell(d['recorded_label'])}`)" if "recorded_label" in d else "")
        )
    return "\n".join(lines) + "\n"


def render_png(report: dict) -> bytes | None:
    """Val loss vs iteration; thin lines per run, the per-iteration median over seeds bold.

    Left: the whole run; right: its second half, zoomed, where the configurations differ."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    colors = plt.get_cmap("tab10")
    curves = []  # (label, color, runs' points, median points)
    for i, label in enumerate(report["settings"]["configs"]):
        runs, by_iter = [], {}
        for r in report["runs"]:
            if r["config"] != label or r.get("status") != "ok":
                continue
            history = (r.get("metrics") or {}).get("history") or []
            pts = [(h["iter"], h["val_loss"]) for h in history if "iter" in h and "val_loss" in h]
            if pts:
                runs.append(pts)
            for x, y in pts:
                by_iter.setdefault(x, []).append(y)
        median = [(x, statistics.median(by_iter[x])) for x in sorted(by_iter)]
        curves.append((label, colors(i % 10), runs, median))
    last = max((x for *_, median in curves for x, _ in median), default=0)
    for ax, start in zip(axes, (0, last // 2)):
        ys_shown = []
        for label, color, runs, median in curves:
            for pts in runs:
                xs, ys = zip(*[(x, y) for x, y in pts if x >= start] or [(None, None)])
                if xs[0] is not None:
                    ax.plot(xs, ys, color=color, lw=0.8, alpha=0.35, marker="." if len(xs) <= 20 else None)
                    ys_shown += ys
            shown = [(x, y) for x, y in median if x >= start]
            if shown:
                xs, ys = zip(*shown)
                n = report["summary"]["configs"][label]["n"]
                ax.plot(xs, ys, color=color, lw=2.5, marker="o" if len(xs) <= 20 else None, label=f"{label} ({n} runs)")
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if start and ys_shown:
            ax.set_ylim(min(ys_shown) - 0.02, max(ys_shown) + 0.02)
    axes[0].set_ylabel("val loss (one batch per evaluation)")
    axes[0].set_title("val loss; thin: runs, bold: median over seeds", fontsize=10)
    axes[1].set_title(f"second half (iteration >= {last // 2}), zoomed", fontsize=10)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8)
    s = report["settings"]
    if s.get("max_iters") is not None:
        banner = f"SHORTENED RUNS: {s['max_iters']} of {s.get('fixed_max_iters')} iterations (smoke test only)"
        fig.suptitle(banner, color="red", fontweight="bold")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_reports(report: dict, out: Path, png: bool = True) -> None:
    atomic_write_bytes(out / "benchmark.md", render_markdown(report).encode())
    if png:
        data = render_png(report)
        if data is None:
            print("[benchmark] matplotlib is not installed: no benchmark.png (pip install matplotlib)", flush=True)
        else:
            atomic_write_bytes(out / "benchmark.png", data)


# ---------------------------------------------------------------------------------------------
# command line


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", help="baseline, canonical, canonical:FIELD=VALUE,..., or folders")
    p.add_argument("--seeds", nargs="+", type=int, help="seeds (default 0 1 2); with --merge: only these seeds' runs")
    p.add_argument("--baseline", help="configuration the paired differences are against (default: the first)")
    p.add_argument("--max-iters", type=int, help="TRAIN_MPS_MAX_ITERS: shortened smoke runs, reported loudly")
    p.add_argument("--data-dir", type=Path, help=f"folder with train.bin / val.bin (default {DEFAULT_DATA_DIR})")
    p.add_argument("--out", type=Path, help="output folder (default results/benchmark/<timestamp>)")
    p.add_argument("--resume", action="store_true", help="keep the finished runs in --out; run the rest")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at once (default 1), started in the interleaved order; each gets cpu_count // jobs threads "
        "unless OMP_NUM_THREADS / MKL_NUM_THREADS are set. Losses compare; elapsed_min is then contended alike",
    )
    p.add_argument("--plot-only", action="store_true", help="redraw benchmark.md and .png from benchmark.json")
    p.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        metavar="DIR",
        help="combine the finished runs of these benchmark folders into one report in --out (runs nothing); "
        "DIR@LABEL@LABEL takes only those configurations from DIR; --configs picks (and orders) the "
        "configurations of the report (default: all), --baseline the reference",
    )
    p.add_argument(
        "--relabel",
        nargs=2,
        action="append",
        metavar=("RECORDED", "NEW"),
        help="with --merge: report the runs recorded as RECORDED under NEW (repeatable; applied at once, so two "
        "can swap), e.g. runs of canonical:ema_decay=0.999 made before that became the default; each run keeps "
        "its recorded label and full recipe",
    )
    return p.parse_args(argv)


def plot_only(out: Path) -> int:
    report = load_record(out / "benchmark.json")
    if report is None:
        raise BenchmarkError(f"no readable {out / 'benchmark.json'}")
    write_reports(report, out)
    print(f"[benchmark] redrew {out / 'benchmark.md'} and {out / 'benchmark.png'}", flush=True)
    return 0


def merge(a: argparse.Namespace, argv: list[str]) -> int:
    """One report from the finished runs of several benchmark folders: runs made side by side in
    separate processes, or on several days. Nothing is run; each run keeps its own record (sources'
    sha256, environment); a configuration whose sources differ between folders is reported."""
    if a.out is None:
        raise BenchmarkError("--merge needs --out (the folder of the merged report)")
    if a.resume or a.max_iters is not None:
        raise BenchmarkError("--merge takes only --configs, --seeds, --baseline, --relabel and --out")
    relabel = dict(a.relabel or [])
    if len(relabel) != len(a.relabel or []):
        raise BenchmarkError(f"--relabel names a recorded label twice: {a.relabel}")
    reports, picks = [], {}
    for spec in a.merge:
        d, *only = str(spec).split("@")  # DIR@LABEL@LABEL: only those configurations of that folder
        d = Path(d)
        report = load_record(d / "benchmark.json")
        if report is None:
            raise BenchmarkError(f"no readable {d / 'benchmark.json'}; run that benchmark (or --resume it) first")
        reports.append((d, report))
        picks[d] = set(only)
    shortened = {r["settings"]["max_iters"] for _, r in reports}
    data = {json.dumps(r["environment"].get("data", {}).get("val.bin")) for _, r in reports}
    if len(shortened) > 1 or len(data) > 1:
        raise BenchmarkError("the folders differ in --max-iters or in the data (val.bin): their runs do not compare")
    runs, origin, details, labels = {}, {}, {}, []
    for d, report in reports:
        for detail in report["settings"].get("config_details", []):
            if detail["label"] in relabel:
                # a report merged twice keeps the label its runs were first recorded under
                detail = {
                    **detail,
                    "label": relabel[detail["label"]],
                    "recorded_label": detail.get("recorded_label", detail["label"]),
                }
            details.setdefault(detail["label"], []).append((d, detail))
        for r in report["runs"]:
            if r.get("status") != "ok" or (picks[d] and r["config"] not in picks[d]):
                continue
            if r["config"] in relabel:
                r = {**r, "config": relabel[r["config"]], "recorded_config": r.get("recorded_config", r["config"])}
            if (a.configs and r["config"] not in a.configs) or (a.seeds and r["seed"] not in a.seeds):
                continue
            key = (r["config"], r["seed"])
            if key in runs:
                raise BenchmarkError(f"{r['config']} seed {r['seed']} is in both {origin[key]} and {d}: pick one")
            runs[key], origin[key] = r, d
            if r["config"] not in labels:
                labels.append(r["config"])
    labels = [c for c in (a.configs or labels) if c in labels]
    if not labels:
        raise BenchmarkError(f"no finished runs of {a.configs or 'any configuration'} in {[str(d) for d in a.merge]}")
    baseline = a.baseline or labels[0]
    if baseline not in labels:
        raise BenchmarkError(f"--baseline {baseline!r} has no finished runs among {labels}")
    seeds = sorted({seed for _, seed in runs})
    used = {(c, d) for (c, _), d in origin.items()}  # a folder's details count only where its runs are taken
    details = {label: [(d, det) for d, det in dets if (label, d) in used] for label, dets in details.items()}
    warnings = []
    recipe_cls = canonical_train_mps().Recipe
    for (label, seed), r in runs.items():
        drift = recipe_drift(label, r.get("metrics", {}).get("recipe", {}), recipe_cls)
        if drift:
            was = r.get("recorded_config", label)
            warnings.append(
                f"`{label}` seed {seed} ran with {', '.join(f'{k}={v[1]!r}' for k, v in drift.items())}, but that label "
                f"now means {', '.join(f'{k}={v[0]!r}' for k, v in drift.items())} (a default changed since, or a "
                f"--relabel is wrong; recorded as `{was}`): report it under a label that reproduces it (--relabel)"
            )
    for label in labels:
        shas = {json.dumps(det.get("sources_sha256"), sort_keys=True) for _, det in details.get(label, [])}
        if len(shas) > 1:
            where = ", ".join(str(d) for d, _ in details[label])
            warnings.append(f"`{label}`'s sources differ between {where} (see each run's sources_sha256)")
    order = [(c, seed) for seed in seeds for c in labels if (c, seed) in runs]
    report = {
        "schema": 1,
        "environment": environment(argv, Path(reports[0][1]["settings"]["data_dir"])),
        "previous_environments": [r["environment"] for _, r in reports],
        "settings": {
            **reports[0][1]["settings"],
            "configs": labels,
            "config_details": [det for label in labels for _, det in details.get(label, [])[:1]],
            "seeds": seeds,
            "baseline": baseline,
        },
        "merged_from": [
            {"dir": str(d), "runs": [f"{c} seed {sd}" for (c, sd), o in origin.items() if o == d]} for d, _ in reports
        ],
        "merge_warnings": warnings,
        "relabeled": relabel,
        "references": reference_losses(Path(reports[0][1]["settings"]["data_dir"])),
        "order": [{"index": i, "config": c, "seed": seed} for i, (c, seed) in enumerate(order)],
        "runs": [runs[k] for k in order],
        "complete": True,
        "finished_at": datetime.now().isoformat(timespec="seconds"),
    }
    report["summary"] = summarize(report["runs"], labels, baseline)
    a.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out / "benchmark.json", report)
    write_reports(report, a.out)
    for w in warnings:
        print(f"[benchmark] WARNING: {w}", flush=True)
    print(render_markdown(report).split("\n## Runs")[0], flush=True)
    print(f"[benchmark] merged {len(order)} runs from {len(reports)} folders -> {a.out}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    try:
        if a.plot_only:
            if a.out is None:
                raise BenchmarkError("--plot-only needs --out (the benchmark folder)")
            return plot_only(a.out)
        if a.merge:
            return merge(a, argv)
        if a.relabel:
            raise BenchmarkError("--relabel only renames runs in a --merge report")
        return benchmark(a, argv)
    except BenchmarkError as e:
        print(f"[benchmark] error: {e}", file=sys.stderr, flush=True)
        return 2


def benchmark(a: argparse.Namespace, argv: list[str]) -> int:
    previous = None
    if a.resume:
        if a.out is None:
            raise BenchmarkError("--resume needs --out (the folder of the interrupted benchmark)")
        previous = load_record(a.out / "benchmark.json")
        if previous is not None:  # unspecified settings come from the interrupted benchmark
            s = previous["settings"]
            a.configs = a.configs or s["configs"]
            a.seeds = a.seeds if a.seeds is not None else s["seeds"]
            a.baseline = a.baseline or s["baseline"]
            a.max_iters = a.max_iters if a.max_iters is not None else s["max_iters"]
            a.data_dir = a.data_dir or Path(s["data_dir"])
    if not a.configs:
        raise BenchmarkError("name the configurations with --configs")
    if len(set(a.configs)) != len(a.configs):
        raise BenchmarkError(f"a configuration is listed twice: {a.configs}")
    seeds = a.seeds if a.seeds is not None else [0, 1, 2]
    if len(set(seeds)) != len(seeds):
        raise BenchmarkError(f"a seed is listed twice: {seeds}")
    baseline = a.baseline or a.configs[0]
    if baseline not in a.configs:
        raise BenchmarkError(f"--baseline {baseline!r} is not one of --configs {a.configs}")
    if a.max_iters is not None and a.max_iters < 1:
        raise BenchmarkError("--max-iters must be >= 1")
    if a.jobs < 1:
        raise BenchmarkError(f"--jobs must be >= 1, got {a.jobs}")
    data_dir = (a.data_dir or DEFAULT_DATA_DIR).resolve()
    out = (a.out or DEFAULT_OUT_ROOT / datetime.now().strftime("%Y%m%d-%H%M%S")).resolve()

    env = environment(argv, data_dir)
    print_environment(env)

    tm = canonical_train_mps()
    configs = [parse_config(spec, tm.Recipe) for spec in a.configs]
    missing = [f for f in ("train.bin", "val.bin") if not (data_dir / f).is_file()]
    if missing:
        raise BenchmarkError(
            f"{data_dir} lacks {', '.join(missing)}; prepare the data with `make data` or pass --data-dir"
        )

    # Everything is checked before anything is written or run.
    plan = [(i, c, seed) for i, (seed, c) in enumerate((seed, c) for seed in seeds for c in configs)]
    records: dict[tuple[str, int], dict] = {}
    for _, c, seed in plan:
        record = load_record(run_dir(out, c.label, seed) / "run.json")
        if not finished(record):
            continue
        if not a.resume:
            raise BenchmarkError(f"{out} already holds finished runs; pass --resume to keep them, or another --out")
        identity = run_identity(c, seed, a.max_iters, data_dir)
        differs = {k: (record.get(k), v) for k, v in identity.items() if record.get(k) != v}
        if differs:
            raise BenchmarkError(
                f"the finished run in {run_dir(out, c.label, seed)} was made with other settings "
                f"(recorded, now): {differs}; use another --out"
            )
        records[(c.label, seed)] = record
    sources: dict[str, dict[str, bytes]] = {}
    for c in configs:
        if c.snapshot in sources:
            continue
        texts, from_snapshot = source_texts(c, out, a.resume)
        name = str(out / "sources" / c.snapshot / "train_mps.py") if from_snapshot else f"{c.origin}/train_mps.py"
        problems = check_train_mps(texts["train_mps.py"].decode("utf-8", errors="replace"), name)
        if problems:
            raise BenchmarkError(
                f"configuration {c.label!r} breaks the harness constraints (scripts/check_constraints.py), "
                "refused:\n  " + "\n  ".join(problems)
            )
        if from_snapshot:
            current = {f: (Path(c.origin) / f).read_bytes() for f in SOURCE_FILES if (Path(c.origin) / f).is_file()}
            if current != texts:
                print(
                    f"[benchmark] WARNING: {c.origin} changed since the benchmark started; "
                    f"resuming with the saved copy in {out / 'sources' / c.snapshot}",
                    flush=True,
                )
        sources[c.snapshot] = texts

    for name, texts in sources.items():
        for f, data in texts.items():
            atomic_write_bytes(out / "sources" / name / f, data)
    print(f"[benchmark] {len(configs)} configurations x {len(seeds)} seeds -> {out}", flush=True)
    for c in configs:
        print(f"  {c.label}: {c.kind} from {c.origin}, recipe overrides {c.overrides}", flush=True)
    if a.max_iters is not None:
        print(
            f"!!! [benchmark] SHORTENED RUNS: TRAIN_MPS_MAX_ITERS={a.max_iters} (fixed: {tm.max_iters}) !!!", flush=True
        )

    report = {
        "schema": 1,
        "environment": env,
        "previous_environments": (
            [*previous.get("previous_environments", []), previous["environment"]] if previous else []
        ),
        "settings": {
            "configs": [c.label for c in configs],
            "config_details": [
                {
                    **dataclasses.asdict(c),
                    "sources_sha256": {f: hashlib.sha256(d).hexdigest() for f, d in sources[c.snapshot].items()},
                }
                for c in configs
            ],
            "seeds": seeds,
            "baseline": baseline,
            "max_iters": a.max_iters,
            "shortened": a.max_iters is not None,
            "fixed_max_iters": tm.max_iters,
            "data_dir": str(data_dir),
            "time_weight": TIME_WEIGHT,
            "jobs": a.jobs,
        },
        "order": [{"index": i, "config": c.label, "seed": seed} for i, c, seed in plan],
        "runs": [],
        "summary": {},
        "references": reference_losses(data_dir),
        "complete": False,
    }

    def save() -> None:
        report["runs"] = [records[(c.label, seed)] for _, c, seed in plan if (c.label, seed) in records]
        report["summary"] = summarize(report["runs"], report["settings"]["configs"], baseline)
        atomic_write_json(out / "benchmark.json", report)

    save()
    threads = threads_per_run(a.jobs)
    if a.jobs > 1:
        print(f"[benchmark] {a.jobs} runs at once, thread settings {threads or 'from the environment'}", flush=True)
    todo = []
    for i, c, seed in plan:
        head = f"[benchmark] run {i + 1}/{len(plan)} | {c.label} | seed {seed} |"
        if (c.label, seed) in records:
            print(f"{head} skipped, finished earlier (--resume): {result_line(records[(c.label, seed)])}", flush=True)
        else:
            todo.append((head, i, c, seed))
    # A pool of `jobs` threads, each waiting on one subprocess: runs start in plan order as slots free up.
    with concurrent.futures.ThreadPoolExecutor(max_workers=a.jobs) as pool:
        futures = {
            pool.submit(announce_and_run, head, c, seed, i, out, data_dir, a.max_iters, threads): (head, c, seed)
            for head, i, c, seed in todo
        }
        for future in concurrent.futures.as_completed(futures):
            head, c, seed = futures[future]
            r = records[(c.label, seed)] = future.result()
            if r["status"] == "ok":
                print(f"{head} {result_line(r)}", flush=True)
            else:
                print(
                    f"{head} FAILED (exit {r['returncode']}) after {r['wall_s']:.1f} s; log {out / r['log']}:",
                    flush=True,
                )
                print("    " + str(r["error"]).replace("\n", "\n    "), flush=True)
            save()

    failed = [r for r in report["runs"] if r["status"] != "ok"]
    report["complete"] = not failed
    report["finished_at"] = datetime.now().isoformat(timespec="seconds")
    save()
    write_reports(report, out)
    print(render_markdown(report).split("\n## Runs")[0], flush=True)
    print(f"[benchmark] wrote {out / 'benchmark.json'}, benchmark.md, benchmark.png", flush=True)
    if failed:
        print(f"[benchmark] {len(failed)} run(s) failed; rerun with --resume --out {out} to retry them", flush=True)
    return 1 if failed else 0


def announce_and_run(head: str, *args) -> dict:
    print(f"{head} started {datetime.now().strftime('%H:%M:%S')}", flush=True)
    return execute_run(*args)


def result_line(r: dict) -> str:
    return (
        f"best_vloss {r['best_vloss']:.4f} | whole-split val {fmt(r.get('val_loss_full'))} | "
        f"elapsed_min {r['elapsed_min']:.2f} | fitness {r['fitness']:.4f} | wall {r['wall_s']:.1f} s"
    )


if __name__ == "__main__":
    sys.exit(main())
