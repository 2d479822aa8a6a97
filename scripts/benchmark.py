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

Trusted scoring: the runner, not the candidate, produces every figure the benchmark ranks. In the subprocess,
before the candidate is imported (`child_main`; torch is imported first, as every candidate imports it):
  clock      time.perf_counter bound to a local name, so a candidate patching time.time / time.perf_counter (in
             train_mps.py or model.py) cannot reach it; trusted_elapsed_min runs from before the import of
             train_mps to train()'s return (the report inside train() counts: the runner cannot tell it apart);
             the parent also keeps the subprocess's wall time (wall_min).
  hooks      global torch hooks (TrainingMonitor). Model calls: the outermost module call whose first positional
             argument is a (B, T) integer tensor; in training mode with gradients on it is a training forward
             (its batch shape recorded), else an evaluation forward. Optimizer steps: every step() of every
             torch.optim optimizer; a run's step count is that of the optimizer holding the largest share of
             the trained model's parameters (the Muon recipe steps Muon and AdamW each iteration: one step).
  the model  the trained model is the module with the most training forwards; the model scored is the module of
             the last evaluation forward when it has the trained model's architecture (an EMA copy, as train()
             evaluates and ends with), else the trained model. The monitor holds references to both.
  held-out   the candidate's TRAIN_MPS_DATA_DIR is a runner-made folder (runs/<config>/seed<k>/data): train.bin
             as it is, val.bin the first windows of the validation split, cut at a block_size window boundary
             (TEST_FRACTION = 0.5 held out), and meta.json, where the source has one, with every count and
             sha256 of the split recomputed. The held-out test split, the rest, is read before the import.
  scoring    trusted_test_loss: the mean cross-entropy over every non-overlapping 64-token window of the test
             split, computed from nanoGPT's inference call model(idx) alone (the last position's logits, no
             targets): for j = 1..64, model(window[:, :j]) predicts token j, normalised by the runner
             (logsumexp), in eval mode under no_grad. Causal by construction. ~15 s on one loaded CPU thread
             for tinyshakespeare's held-out half (281 windows). The same scoring of the candidate's half gives
             trusted_candidate_val_loss and the batch floor that the returned best_vloss is checked against
             (batch_floor, below); ~20 s for both halves of a shortened run's model.
  layouts    both layouts of train_mps.py run (scripts/check_constraints.py infers which): odegpt's, and the
             DreamTeam original's (fixed locals at the top of train(), a data folder literal, device 'mps', no
             seed). An original-layout candidate runs from an adapted copy (prepare_candidate): the value of
             `data_dir = '...'` becomes the run's data folder (its shakespeare/ holds the data, and the run's
             working directory holds data/shakespeare/ for the relative spelling), `device = 'mps'` becomes 'cuda' or
             'cpu' where there is no MPS, and `max_iters` the --max-iters of a shortened run; nothing else changes.
             Every run is seeded by the runner before the import (random, numpy, torch), and the original's 0-d
             tensor best_vloss is accepted. Each change is listed in the run's `adaptations` and in benchmark.md.
Ranked (medians, paired differences against the baseline, the headline): trusted_test_loss, trusted_elapsed_min
and trusted_fitness = trusted_test_loss + 0.01 * trusted_elapsed_min. The candidate's own figures stay in every
record and table, labelled `own`: the returned (best_vloss, elapsed_min), its fitness = best_vloss + 0.01 *
elapsed_min and its metrics.json's whole-split val (on the part of the split it was given). The runner also
records the optimizer steps, training forwards and batch shapes. Reports made before the trusted runner (no
trusted fields) merge as before, ranked on their own figures and flagged UNTRUSTED in benchmark.md.

Violations (each run's `violations`, empty when clean): a run with any is never ranked (left out of the
medians and paired differences, listed with its reasons in benchmark.md) and the exit status is 1:
  - optimizer steps != the run's iterations (10001, or --max-iters), fewer training forwards than iterations,
    a training batch shape other than (8, 64), more than one model trained, no model found;
  - a return that is not a pair of plain floats (`type(x) is float`: a float subclass is not; in the original
    layout best_vloss may also be a 0-d floating torch.Tensor), not finite, or negative;
  - a returned best_vloss more than vloss_slack below the trusted test loss (VLOSS_SLACK = 1.0 plus how much
    harder the held-out half is than the candidate's as the Kneser-Ney reference scores the two: 0.59 nats on
    tinyshakespeare) that is also more than VLOSS_MARGIN = 0.15 below the runner's batch floor, the lowest loss
    one evaluation batch (8 windows of 64 at random offsets) of the trained model has on the candidate's part of
    val: the minimum over FLOOR_REPEATS = 1000 times as many random batches as the run evaluates (101 for 10001
    iterations), from the runner's own per-token losses there (batch_floor). An honest best_vloss, the min of ~101
    single-batch losses of the same distribution, falls below that floor with probability ~1/1001; the slack
    alone flagged honest runs whose evaluation batches met an easy passage (tinyshakespeare seed 1), and the floor
    alone would flag a model that was better earlier in its run than at its end. Runs recorded before the floor
    are judged by the slack alone. A returned
    elapsed_min below 0.9 x the runner's clock from the call of train() to the last optimizer step, minus 0.1 min;
  - the runner could not score the model (model(idx) does not return (b, t, vocab) logits) or its loss is not
    finite;
  - a timeout: every run has one (--timeout-min; default 4 h for full runs, 5 min + its share of 4 h for
    shortened ones). Each run is its own process group (start_new_session); on a timeout, or an interrupt of the
    benchmark (Ctrl-C or SIGTERM), the whole group is killed (os.killpg), so no training process is orphaned.
What it does not stop: code that attacks the runner inside its own process (removing the hooks makes a run
a violation, but reading the runner's memory or the source data folder by path is not prevented; review stays the
last line of defence), and warm starts from weights on disk outside the run's folder.

Reports per configuration every figure above: median, mean +- std over seeds, and the per-seed paired differences
against the baseline configuration with their median.

Outputs under --out (default results/benchmark/<timestamp>), each written atomically:
  benchmark.json   environment, settings, order, every run's record with its full metrics.json, summary
  benchmark.md     the tables
  benchmark.png    val loss vs iteration, one colour per configuration, the median over seeds bold
  runs/<config>/seed<k>/   train.log, metrics.json, ckpt.pt, returned.json (the runner's findings), data/ (the
                           candidate's data folder) and run.json (the record, saved when the run ends)

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

Exit status: 0 all runs finished clean, 1 some run failed, timed out or broke the contract (recorded; the others
go on), 2 a usage or input error (nothing ran), 130 interrupted (the training processes killed; --resume finishes).
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import dataclasses
import functools
import hashlib
import importlib.util
import io
import json
import math
import os
import platform
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import typing
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
DEFAULT_DATA_DIR = ROOT / "data" / "shakespeare"
DEFAULT_OUT_ROOT = ROOT / "results" / "benchmark"
SOURCE_FILES = ("model.py", "train_mps.py")
TIME_WEIGHT = 0.01  # fitness = loss + TIME_WEIGHT * minutes, for the trusted and the candidate's own figures
# The runner's figures (what the benchmark ranks), then the candidate's own (its return value and metrics.json).
TRUSTED_METRICS = ("trusted_test_loss", "trusted_elapsed_min", "trusted_fitness")
OWN_METRICS = ("best_vloss", "val_loss_full", "elapsed_min", "fitness")
METRICS = (*TRUSTED_METRICS, *OWN_METRICS, "wall_min")
METRIC_TITLES = {
    "trusted_test_loss": "trusted test loss",
    "trusted_elapsed_min": "trusted min",
    "trusted_fitness": "trusted fitness",
    "best_vloss": "own best_vloss",
    "val_loss_full": "own whole-split val",
    "elapsed_min": "own elapsed_min",
    "fitness": "own fitness",
    "wall_min": "wall min",
}
BUILTIN_SOURCE = "canonical"  # the snapshot folder shared by baseline, canonical and canonical:...

# The seeds' starting point, the one place its values live: plain pre-LN GPT (euler, one step, lie
# splitting), nanoGPT's init with tied embeddings, vocab 50304, no bias, dropout 0; AdamW lr 3e-4, betas
# (0.9, 0.95), weight decay 0.1 on >= 2-D parameters, clipping at 1.0, a constant learning rate, no warmup,
# no EMA. Every Recipe field but the seed is pinned (a test checks), so a change of the canonical defaults
# cannot move the baseline; decay_frac is unused under constant. levers.py's fields are absent: off.
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
    fused_optimizer=False,  # nanoGPT's configure_optimizers: AdamW's per-tensor loop on CPU and MPS
    learning_rate=3e-4,
    min_lr=3e-4,
    schedule="constant",
    warmup_iters=0,
    decay_frac=0.2,
    weight_decay=0.1,
    beta1=0.9,
    beta2=0.95,
    grad_clip=1.0,
    ema_decay=0.0,
    random_steps=0,
)

# The harness contract's fixed values that the runner checks or relies on at run time (scripts/check_constraints.py
# checks the source; a test compares these with train_mps's fixed block).
FIXED = {"batch_size": 8, "block_size": 64, "max_iters": 10001, "eval_interval": 100}

# Trusted scoring (see the module docstring). The candidate's val.bin holds the first windows of the validation
# split; the last TEST_FRACTION of its block_size windows (cut at a window boundary) is the held-out test split.
TEST_FRACTION = 0.5
# A returned best_vloss is a violation when it is both more than vloss_slack below the trusted test loss and more
# than VLOSS_MARGIN below the runner's batch floor (batch_floor). best_vloss is the min of ~101 single-batch losses
# on the candidate's half, and how far that sits below the half's whole-split loss depends on the text: 0.3 to 0.7
# nats on most runs, 0.95 to 1.11 on tinyshakespeare's seed 1, whose evaluation batches meet an easy passage (the
# slack alone flagged two honest runs there). So the runner also measures the floor on the trained model itself:
# the min over FLOOR_REPEATS times as many random batches as the run evaluates, from its own per-token losses.
# VLOSS_MARGIN covers what that leaves out: windows at random offsets whose per-token losses come from the aligned
# windows' contexts. The slack (VLOSS_SLACK plus how much harder the held-out half is than the candidate's, as the
# Kneser-Ney reference scores the two) covers a model that was better earlier in its run than at its end.
VLOSS_MARGIN = 0.15
FLOOR_REPEATS = 1000
VLOSS_SLACK = 1.0
# A returned elapsed_min below ELAPSED_SLACK_REL * (the runner's clock up to the last optimizer step) - ELAPSED_SLACK_MIN
# is a violation: the returned clock must cover the training it did (10% and 6 s for jitter and the clock's start).
ELAPSED_SLACK_REL, ELAPSED_SLACK_MIN = 0.9, 0.1
FULL_TIMEOUT_MIN = 240.0  # a full run takes 10 to 40 min on a 2-core CPU

# Runs in the fresh subprocess: imports this file (scripts/ then leaves sys.path), then child_main does the
# harness's import of the candidate under the runner's hooks and clock, calls train() and scores the model.
RUNNER = r"""
import sys
sys.path.insert(0, sys.argv[1])
import benchmark
sys.path.remove(sys.argv[1])
sys.exit(benchmark.child_main(sys.argv[2:]))
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


# Built-ins may set the fields of levers.py (canonical:ngram_distill=0.5,...), the off-by-default levers that live
# beside the two files (which never import it). Such a built-in trains from its own snapshot, the two files and
# levers.py, as levers.train(levers.LeverRecipe(**overrides)); every other configuration runs as before.
LEVERS_FILE = "levers.py"
LEVERS_SOURCE = "canonical-levers"  # the snapshot folder of the built-ins that set a lever


def builtin_recipe_class():
    """The class built-in specs are parsed against: levers.LeverRecipe, train_mps.Recipe and the levers' fields."""
    canonical_train_mps()
    import levers

    return levers.LeverRecipe


def builtin_snapshot(overrides: dict | None) -> str:
    """BUILTIN_SOURCE, or LEVERS_SOURCE where the overrides set a field train_mps.Recipe lacks (a lever's)."""
    plain = {f.name for f in dataclasses.fields(canonical_train_mps().Recipe)}
    return LEVERS_SOURCE if set(overrides or {}) - plain else BUILTIN_SOURCE


def source_files(config: Config) -> tuple[str, ...]:
    """The files a configuration trains with: model.py and train_mps.py, and levers.py for a lever's built-in."""
    return (*SOURCE_FILES, LEVERS_FILE) if config.snapshot == LEVERS_SOURCE else SOURCE_FILES


def train_with(train_mps, overrides: dict | None):
    """The child's call: train(), train(Recipe(**overrides)), or a lever's through the levers.py beside train_mps."""
    if overrides is None:
        return train_mps.train()
    if set(overrides) <= {f.name for f in dataclasses.fields(train_mps.Recipe)}:
        return train_mps.train(train_mps.Recipe(**overrides))
    import levers  # the run's folder leads sys.path: its levers.py, on its train_mps

    return levers.train(levers.LeverRecipe(**overrides))


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
        overrides = parse_overrides(spec[len("canonical:") :], recipe_cls)
        return Config(spec, "builtin", canonical, builtin_snapshot(overrides), overrides)
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


@functools.cache
def constraints_checker():
    """scripts/check_constraints.py, loaded once per process."""
    return load_module("_benchmark_check_constraints", SCRIPTS / "check_constraints.py")


def check_train_mps(source: str, filename: str) -> list[str]:
    """scripts/check_constraints.py on one train_mps.py: the violations as `path:line: RULE: message`."""
    try:
        violations = constraints_checker().check(source, filename=filename)
    except SyntaxError as e:
        return [f"{filename}:{e.lineno}: syntax error: {e.msg}"]
    return [f"{filename}:{v.line if v.line is not None else '-'}: {v.rule}: {v.message}" for v in violations]


def source_texts(config: Config, out: Path, resume: bool) -> tuple[dict[str, bytes], bool]:
    """The two files a configuration trains with: on --resume the saved copy if there is one, else the origin."""
    snap = out / "sources" / config.snapshot
    use_snapshot = resume and all((snap / f).is_file() for f in source_files(config))
    folder = snap if use_snapshot else Path(config.origin)
    return {f: (folder / f).read_bytes() for f in source_files(config)}, use_snapshot


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


def vloss_slack(references: dict | None) -> float:
    """How far below the trusted test loss a returned best_vloss may be: VLOSS_SLACK, plus how much harder the
    held-out test split is than the candidate's part of val as the Kneser-Ney reference (fitted on train.bin alone,
    its best order) scores the two. The candidate measures its best_vloss on its part, the runner on the other."""
    kn = (references or {}).get("kneser_ney") or {}
    test, mine = kn.get("heldout_test"), kn.get("candidate_val")
    if not test or not mine:
        return VLOSS_SLACK
    return VLOSS_SLACK + max(0.0, min(test.values()) - min(mine.values()))


def print_environment(env: dict) -> None:
    print("[benchmark] environment", flush=True)
    for k, v in env.items():
        print(f"  {k:18} {v}", flush=True)


# ---------------------------------------------------------------------------------------------
# the trusted runner: held-out data (parent), hooks, clock and scoring (subprocess)


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


# ---------------------------------------------------------------------------------------------
# the DreamTeam original layout: fixed locals at the top of train(), a data folder the user writes in as a literal,
# device 'mps' used directly, no seed. The runner adapts exactly those lines (adapt_original_layout) and says so.

ORIGINAL_DATA_SUBDIR = "shakespeare"  # the original joins data_dir with "shakespeare/train.bin"


def train_layout(source: str) -> str:
    """ "module" (odegpt's fixed block at module level), "train" (the DreamTeam original's fixed locals in train())
    or "none", as scripts/check_constraints.py infers it."""
    try:
        return constraints_checker().layout(source)
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


def is_token_batch(x) -> bool:
    """A (B, T) tensor of token ids: what a language model's top-level call receives."""
    import torch

    return isinstance(x, torch.Tensor) and x.dim() == 2 and x.dtype in (torch.int64, torch.int32, torch.int16)


class TrainingMonitor:
    """Global torch hooks, installed before the candidate is imported, that watch what train() does.

    Model calls: the outermost module call that receives a (B, T) integer tensor as its first positional argument
    (the model, not its embedding inside it). A call in training mode with gradients on is a training forward
    (its batch shape recorded), any other an evaluation forward. Optimizer steps: every `step()` of every
    torch.optim.Optimizer (subclasses included), per optimizer. Strong references keep the modules and optimizers
    alive after train() returns. `paused` stops recording (the runner's own scoring)."""

    def __init__(self, clock):
        self.clock = clock
        self.paused = False
        self.stack: list[bool] = []  # one entry per module call in progress: was it a recorded model call?
        self.inside = 0  # recorded model calls in progress
        self.modules: dict[int, dict] = {}
        self.optimizers: dict[int, dict] = {}
        self.last_eval = None  # id of the module of the latest evaluation forward
        self.handles = []

    def install(self) -> None:
        import torch.nn.modules.module as mm
        import torch.optim.optimizer as om

        self.handles = [
            mm.register_module_forward_pre_hook(self.pre),
            mm.register_module_forward_hook(self.post, always_call=True),
            om.register_optimizer_step_post_hook(self.step),
        ]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def pre(self, module, args):
        recorded = not self.inside and not self.paused and bool(args) and is_token_batch(args[0])
        self.stack.append(recorded)
        if recorded:
            import torch

            self.inside += 1
            entry = self.modules.get(id(module))
            if entry is None:
                entry = self.modules[id(module)] = {
                    "module": module,
                    "train": 0,
                    "eval": 0,
                    "shapes": {},
                    "eval_shapes": {},
                }
            shape = "x".join(map(str, args[0].shape))
            kind = "train" if module.training and torch.is_grad_enabled() else "eval"
            entry[kind] += 1
            shapes = entry["shapes" if kind == "train" else "eval_shapes"]
            shapes[shape] = shapes.get(shape, 0) + 1
            if kind == "eval":
                self.last_eval = id(module)

    def post(self, module, args, output):
        if self.stack and self.stack.pop():
            self.inside -= 1

    def step(self, optimizer, args, kwargs):
        if self.paused:
            return
        entry = self.optimizers.get(id(optimizer))
        if entry is None:
            entry = self.optimizers[id(optimizer)] = {"optimizer": optimizer, "steps": 0}
        entry["steps"] += 1
        entry["last_step"] = self.clock()

    def findings(self) -> dict:
        """The trained model, the model to score (the last evaluated one if it is a copy of the trained one, as
        an EMA; else the trained one), the optimizer steps of the trained model's main optimizer, the shapes."""
        trained = max(self.modules.values(), key=lambda e: e["train"], default=None)
        if trained is None or trained["train"] == 0:
            return {"model_found": False, "modules": self.describe_modules()}
        scored, scored_as = trained, "trained"
        last = self.modules.get(self.last_eval)
        if last is not None and last is not trained:
            if same_architecture(last["module"], trained["module"]):
                scored, scored_as = last, "evaluated copy"
            else:
                scored_as = "trained (the last evaluated module is another architecture)"
        owned = {id(p): p.numel() for p in trained["module"].parameters()}
        steps, main, last_step = 0, None, None
        for i, o in enumerate(self.optimizers.values()):
            share = sum(owned.get(id(p), 0) for g in o["optimizer"].param_groups for p in g["params"])
            if share and (main is None or share > main[0]):
                main, steps, last_step = (share, i), o["steps"], o.get("last_step")
        return {
            "model_found": True,
            "model": scored["module"],
            "scored_module": scored_as,
            "model_class": type(scored["module"]).__qualname__,
            "optimizer_steps": steps,
            "main_optimizer": None if main is None else main[1],
            "last_step_clock": last_step,
            "training_forwards": trained["train"],
            "training_batch_shapes": dict(trained["shapes"]),
            "modules_trained": sum(e["train"] > 0 for e in self.modules.values()),
            "modules": self.describe_modules(),
            "optimizers": [
                {"class": type(o["optimizer"]).__qualname__, "steps": o["steps"]} for o in self.optimizers.values()
            ],
        }

    def describe_modules(self) -> list:
        return [
            {
                "class": type(e["module"]).__qualname__,
                "train": e["train"],
                "eval": e["eval"],
                "train_shapes": e["shapes"],
                "eval_shapes": e["eval_shapes"],
            }
            for e in self.modules.values()
        ]


def same_architecture(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)


def trusted_token_losses(model, tokens, block_size: int = FIXED["block_size"], windows_per_batch: int = 64):
    """Cross-entropy (nats, float64 array of shape (n_windows, block_size)) of `model` at every target of every
    non-overlapping block_size window of `tokens` (the windows of train_mps.full_split_loss), computed by the
    runner from nanoGPT's inference call alone: for j = 1..T, model(window[:, :j]) (no targets) returns the last
    position's logits (b, 1, vocab), normalised here by log_softmax, and predicts token j. Causal by construction:
    no position sees a token after its target."""
    import numpy as np
    import torch

    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    data = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    n_windows = (len(data) - 1) // block_size
    if n_windows < 1:
        raise ValueError(f"{len(data)} tokens hold no window of {block_size + 1}")
    offsets = torch.arange(n_windows)[:, None] * block_size + torch.arange(block_size + 1)[None, :]  # (n, T + 1)
    windows = data[offsets].to(device)
    was_training = model.training
    model.eval()
    losses = np.zeros((n_windows, block_size))
    try:
        with torch.no_grad():
            for start in range(0, n_windows, windows_per_batch):
                w = windows[start : start + windows_per_batch]  # (b, T + 1)
                for j in range(1, block_size + 1):
                    out = model(w[:, :j])
                    logits = out[0] if isinstance(out, (tuple, list)) else out
                    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or logits.shape[0] != len(w):
                        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                        raise ValueError(f"model(idx) returned logits of shape {shape}, not (b, 1 or t, vocab)")
                    last = logits[:, -1, :].float()  # (b, vocab)
                    nll = torch.logsumexp(last, dim=-1) - last.gather(1, w[:, j : j + 1])[:, 0]  # -log_softmax[target]
                    losses[start : start + len(w), j - 1] = nll.double().cpu().numpy()
    finally:
        model.train(was_training)
    return losses


def trusted_test_loss(model, tokens, block_size: int = FIXED["block_size"], windows_per_batch: int = 64) -> float:
    """Mean cross-entropy (nats) of `model` over every non-overlapping block_size window of `tokens`: the mean of
    trusted_token_losses."""
    return float(trusted_token_losses(model, tokens, block_size, windows_per_batch).mean())


def evaluations(iters: int) -> int:
    """How many evaluations a run of `iters` iterations makes under the fixed block (at every iteration
    divisible by eval_interval, from 0): 101 for 10001."""
    return len(range(0, iters, FIXED["eval_interval"]))


def batch_floor(
    token_losses,
    n_evals: int,
    batch_size: int = FIXED["batch_size"],
    block_size: int = FIXED["block_size"],
    repeats: int = FLOOR_REPEATS,
    seed: int = 0,
) -> float:
    """The lowest loss one evaluation batch could plausibly have: the minimum, over repeats * n_evals batches of
    batch_size windows at random offsets (seeded, so the verdict reproduces), of the batch's mean of `token_losses`
    (the per-target losses in text order, flattened). A run evaluating n_evals times returns the min over n_evals
    such batches; this is the min over `repeats` times as many."""
    import numpy as np

    flat = np.asarray(token_losses, dtype=np.float64).ravel()
    starts = len(flat) - block_size + 1
    if starts < 1 or n_evals < 1:
        raise ValueError(f"{len(flat)} losses and {n_evals} evaluations give no batch of {block_size}")
    csum = np.concatenate([[0.0], np.cumsum(flat)])
    at = np.random.default_rng(seed).integers(0, starts, size=(repeats, n_evals, batch_size))
    windows = (csum[at + block_size] - csum[at]) / block_size  # (repeats, n_evals, batch_size) window means
    return float(windows.mean(-1).min())


def returned_value(v) -> dict:
    """One returned value as the record keeps it: its exact type and, for floats (subclasses too), the plain value
    (non-finite values as strings, so the JSON stays strict)."""
    value = float.__float__(v) if isinstance(v, float) else None
    torch = sys.modules.get("torch")
    if torch is not None and type(v) is torch.Tensor and v.numel() == 1 and v.is_floating_point():
        value = float(v.detach().cpu().item())  # the original's best_vloss (judged by layout, judge_run)
    if value is not None and not math.isfinite(value):
        value = str(value)
    return {"type": f"{type(v).__module__}.{type(v).__qualname__}", "value": value}


def child_main(argv: list[str]) -> int:
    """The subprocess: `folder overrides_json result_path heldout_json`. Clock and hooks first, then the harness's
    import and train(), then the runner's scoring of the model it found; the facts go to result_path (judged by
    the parent, judge_run)."""
    clock = time.perf_counter  # bound before the candidate exists: patching time.* later cannot reach it
    folder, overrides, result_path, heldout = argv[0], json.loads(argv[1]), argv[2], json.loads(argv[3])
    import numpy as np
    import torch  # noqa: F401  (imported before the clock starts: every candidate imports it)

    test, mine = heldout_halves(heldout)  # read before the candidate runs
    seed = int(os.environ.get("TRAIN_MPS_SEED", "0"))  # for candidates that set no seed (odegpt's train() re-seeds)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    monitor = TrainingMonitor(clock)
    monitor.install()
    sys.path.insert(0, folder)
    t_import = clock()
    import train_mps

    t_call = clock()
    result = train_with(train_mps, overrides)
    t_return = clock()
    monitor.paused = True
    found = monitor.findings()
    trusted = {
        "elapsed_min": (t_return - t_import) / 60.0,
        "import_s": t_call - t_import,
        "train_min": None if found.get("last_step_clock") is None else (found["last_step_clock"] - t_call) / 60.0,
    }
    model = found.pop("model", None)
    found.pop("last_step_clock", None)
    if model is not None:
        t = clock()
        try:
            trusted["test_loss"] = trusted_test_loss(model, test)
            own_half = trusted_token_losses(model, mine)
            trusted["candidate_val_loss"] = float(own_half.mean())
            if heldout.get("evaluations"):
                trusted["batch_floor"] = batch_floor(own_half, heldout["evaluations"])
        except Exception as e:  # a model that breaks nanoGPT's inference call is a finding, not a crash
            trusted["test_loss"], trusted["scoring_error"] = None, f"{type(e).__name__}: {e}"
        trusted["scoring_s"] = clock() - t
        if trusted["test_loss"] is not None and not math.isfinite(trusted["test_loss"]):
            trusted["test_loss"] = str(trusted["test_loss"])
    pair = type(result) is tuple and len(result) == 2
    payload = {
        "returned": [returned_value(v) for v in result] if pair else None,
        "returned_repr": repr(result)[:500],
        "module_file": getattr(train_mps, "__file__", None),
        "trusted": trusted,
        "monitor": found,
    }
    with open(result_path, "w") as f:
        json.dump(payload, f)
    return 0


def plain(value):
    """A recorded number back to a float ('nan', 'inf' strings included); None stays None."""
    return None if value is None else float(value)


def judge_run(
    record: dict, returned: dict, expected_iters: int, layout: str = "module", slack: float = VLOSS_SLACK
) -> None:
    """The trusted figures and the violations of a finished run, from the subprocess's findings, into `record`.
    `layout` "train" (the DreamTeam original's) also accepts a 0-d floating torch.Tensor as best_vloss."""
    violations = record["violations"]
    allowed = {"best_vloss": {"builtins.float"}, "elapsed_min": {"builtins.float"}}
    if layout == "train":
        allowed["best_vloss"].add("torch.Tensor")
    monitor, trusted = returned.get("monitor") or {}, returned.get("trusted") or {}
    values = returned.get("returned")
    own = [None, None]
    if values is None:
        violations.append(f"train() returned {returned.get('returned_repr')}, not a pair (best_vloss, elapsed_min)")
    else:
        for i, (name, v) in enumerate(zip(("best_vloss", "elapsed_min"), values)):
            x = plain(v["value"])
            if v["type"] not in allowed[name] or x is None:
                violations.append(f"returned {name} is a {v['type']}, not a float")
            elif not math.isfinite(x):
                violations.append(f"returned {name} is {x}: not finite")
            elif x < 0:
                violations.append(f"returned {name} is {x}: negative")
            else:
                own[i] = x
    test_loss = plain(trusted.get("test_loss"))
    record.update(
        best_vloss=own[0],
        elapsed_min=own[1],
        fitness=fitness(*own) if None not in own else None,
        returned_repr=returned.get("returned_repr"),
        trusted_test_loss=test_loss if test_loss is not None and math.isfinite(test_loss) else None,
        trusted_elapsed_min=trusted.get("elapsed_min"),
        trusted_train_min=trusted.get("train_min"),
        trusted_scoring_s=trusted.get("scoring_s"),
        trusted_candidate_val_loss=trusted.get("candidate_val_loss"),
        trusted_batch_floor=trusted.get("batch_floor"),
        optimizer_steps=monitor.get("optimizer_steps"),
        training_forwards=monitor.get("training_forwards"),
        training_batch_shapes=monitor.get("training_batch_shapes"),
        scored_module=monitor.get("scored_module"),
        monitor=monitor,
    )
    record["trusted_fitness"] = (
        fitness(record["trusted_test_loss"], record["trusted_elapsed_min"])
        if record["trusted_test_loss"] is not None and record["trusted_elapsed_min"] is not None
        else None
    )
    if not monitor.get("model_found"):
        violations.append("no model found: no module was called in training mode on a (B, T) batch of token ids")
        return
    if trusted.get("scoring_error"):
        violations.append(f"the runner could not score the model: {trusted['scoring_error']}")
    elif record["trusted_test_loss"] is None:
        violations.append(f"trusted test loss is {trusted.get('test_loss')}: not finite")
    steps = monitor.get("optimizer_steps")
    if steps != expected_iters:
        violations.append(f"{steps} optimizer steps, not the {expected_iters} iterations of the run")
    if (monitor.get("training_forwards") or 0) < expected_iters:
        violations.append(f"{monitor.get('training_forwards')} training forwards for {expected_iters} iterations")
    want = f"{FIXED['batch_size']}x{FIXED['block_size']}"
    other = {s: n for s, n in (monitor.get("training_batch_shapes") or {}).items() if s != want}
    if other:
        violations.append(f"training batches of shape {other} (shape: count), not {want}")
    if (monitor.get("modules_trained") or 0) > 1:
        violations.append(f"{monitor['modules_trained']} models were trained, not one")
    floor = plain(trusted.get("batch_floor"))
    floor = floor if floor is not None and math.isfinite(floor) else None
    if own[0] is not None and record["trusted_test_loss"] is not None:
        below_test = own[0] < record["trusted_test_loss"] - slack
        if below_test and (floor is None or own[0] < floor - VLOSS_MARGIN):
            reach = (
                ""
                if floor is None
                else f", and more than {VLOSS_MARGIN:g} below {floor:.4f}, the lowest loss the runner finds for one "
                f"evaluation batch of the trained model on the candidate's val (min over {FLOOR_REPEATS} x "
                f"{record.get('heldout', {}).get('evaluations', '?')} random batches)"
            )
            violations.append(
                f"returned best_vloss {own[0]:.4f} is more than {slack:.3f} nats below the trusted test loss "
                f"{record['trusted_test_loss']:.4f}{reach}"
            )
    train_min = record["trusted_train_min"]
    if own[1] is not None and train_min is not None and own[1] < ELAPSED_SLACK_REL * train_min - ELAPSED_SLACK_MIN:
        violations.append(
            f"returned elapsed_min {own[1]:.3f} is below the runner's clock ({train_min:.3f} min to the last "
            f"optimizer step; allowed down to {ELAPSED_SLACK_REL:g} x that - {ELAPSED_SLACK_MIN:g} min)"
        )


# Process groups of the training subprocesses running now (pgid), killed on a timeout or an interrupt.
LIVE_GROUPS: set[int] = set()
LIVE_LOCK = threading.Lock()
# ast.parse is not thread-safe on CPython 3.11.7 and older 3.12s (gh-106905: "AST constructor recursion depth
# mismatch" when two threads parse at once, seen in CI with --jobs 2); the runs' preparation parses the candidate
# (layout, adaptation), so it takes this lock. It is quick: file copies and one parse.
PREPARE_LOCK = threading.Lock()


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_all_groups() -> int:
    with LIVE_LOCK:
        groups = list(LIVE_GROUPS)
    for g in groups:
        kill_group(g)
    return len(groups)


def default_timeout_min(max_iters) -> float:
    """4 hours for a full run; a shortened run gets its share of that, plus 5 minutes for imports and scoring."""
    if max_iters is None:
        return FULL_TIMEOUT_MIN
    return 5.0 + FULL_TIMEOUT_MIN * max_iters / FIXED["max_iters"]


# ---------------------------------------------------------------------------------------------
# runs


def run_dir(out: Path, label: str, seed: int) -> Path:
    return out / "runs" / slug(label) / f"seed{seed}"


def sources_sha256(texts: dict[str, bytes]) -> dict[str, str]:
    """A configuration's files (name -> bytes) as the sha256 each run records."""
    return {f: hashlib.sha256(d).hexdigest() for f, d in texts.items()}


def kept_source_drift(records: dict, configs: list, sources: dict) -> list[str]:
    """What --resume must say of the finished runs it keeps: one line per run whose recorded sources_sha256 differs
    from the files its configuration trains with now (the saved copy gone and the origin changed, or re-made)."""
    now = {c.label: sources_sha256(sources[c.snapshot]) for c in configs}
    order = {label: i for i, label in enumerate(now)}
    out = []
    for label, seed in sorted(records, key=lambda k: (order[k[0]], k[1])):
        was = records[(label, seed)].get("sources_sha256")
        if not was or was == now[label]:
            continue
        files = ", ".join(f"{f} {was.get(f, '?')[:12]} -> {h[:12]}" for f, h in now[label].items() if was.get(f) != h)
        out.append(
            f"`{label}` seed {seed} was kept from an earlier run whose sources differ from the ones this "
            f"benchmark now trains it with ({files}): its figures come from those files"
        )
    return out


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
    config: Config,
    seed: int,
    index: int,
    out: Path,
    data_dir: Path,
    max_iters,
    threads: dict[str, str] | None = None,
    timeout_min: float | None = None,
    slack: float = VLOSS_SLACK,
    stopping: threading.Event | None = None,
) -> dict:
    """One training run in a fresh subprocess (its own process group) under the trusted runner; returns its
    record (also saved as run.json). `threads`: thread variables for the subprocess (threads_per_run);
    `timeout_min`: default default_timeout_min(max_iters); on a timeout the whole process group is killed.
    `stopping`: the calling benchmark's interrupt flag: once set, the run does not start, or a run whose process
    group was killed is recorded as interrupted (one flag per benchmark() call, so an interrupted benchmark
    leaves no state behind for the next one in the same process)."""
    stopping = threading.Event() if stopping is None else stopping
    rdir = run_dir(out, config.label, seed)
    if rdir.exists():  # leftovers of a failed or interrupted attempt
        shutil.rmtree(rdir)
    rdir.mkdir(parents=True)
    source = out / "sources" / config.snapshot
    with PREPARE_LOCK:
        folder, heldout, layout, adaptations = prepare_candidate(source, rdir, data_dir, max_iters)
    timeout_min = default_timeout_min(max_iters) if timeout_min is None else timeout_min
    expected_iters = FIXED["max_iters"] if max_iters is None else max_iters
    heldout["evaluations"] = evaluations(expected_iters)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAIN_MPS_") and k != "PYTHONPATH"}
    env.update(TRAIN_MPS_SEED=str(seed), TRAIN_MPS_OUT_DIR=str(rdir), TRAIN_MPS_DATA_DIR=heldout["candidate_data_dir"])
    env.update(threads or {})
    if max_iters is not None:
        env["TRAIN_MPS_MAX_ITERS"] = str(max_iters)
    result_path = rdir / "returned.json"
    log_path = rdir / "train.log"
    args = [str(folder), json.dumps(config.overrides), str(result_path), json.dumps(heldout)]
    cmd = [sys.executable, "-c", RUNNER, str(SCRIPTS), *args]
    started = datetime.now().isoformat(timespec="milliseconds")
    status, returncode, pgid = None, None, None
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        if stopping.is_set():
            status = "interrupted"
        else:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=rdir, start_new_session=True
            )
            pgid = proc.pid
            with LIVE_LOCK:
                LIVE_GROUPS.add(pgid)  # start_new_session: the child leads its own group, pgid = pid
            atomic_write_json(rdir / "running.json", {"pid": proc.pid, "pgid": proc.pid, "started_at": started})
            try:
                returncode = proc.wait(timeout=60.0 * timeout_min)
            except subprocess.TimeoutExpired:
                status = "timeout"
            finally:  # a timeout, an interrupt, or any error here: no training process outlives the run
                kill_group(proc.pid)
                returncode = proc.wait()
                with LIVE_LOCK:
                    LIVE_GROUPS.discard(proc.pid)
            if stopping.is_set() and status is None and returncode != 0:
                status = "interrupted"
    wall_s = time.perf_counter() - t0
    record = {
        **run_identity(config, seed, max_iters, data_dir),
        "order_index": index,
        "status": status or "failed",
        "returncode": returncode,
        "started_at": started,
        "finished_at": datetime.now().isoformat(timespec="milliseconds"),
        "wall_s": wall_s,
        "wall_min": wall_s / 60.0,
        "timeout_min": timeout_min,
        "source_dir": str(source),
        "sources_sha256": {f: sha256(source / f) for f in source_files(config)},
        "log": str(log_path.relative_to(out)),
        "thread_env": {k: env[k] for k in THREAD_VARS if k in env},
        "pgid": pgid,
        "heldout": heldout,
        "layout": layout,
        "adaptations": adaptations,
        "expected_iters": expected_iters,
        "violations": [],
        "warnings": [],
    }
    returned = load_record(result_path)
    metrics = load_record(rdir / "metrics.json")
    record["metrics"] = metrics
    if status == "timeout":
        record["violations"].append(f"timeout: still running after {timeout_min:g} min; its process group was killed")
        record["error"] = tail(log_path)
    elif returncode == 0 and returned and "trusted" in returned:
        record["status"] = "ok"
        judge_run(record, returned, expected_iters, layout, slack)
        record["val_loss_full"] = (metrics or {}).get("val_loss_full")  # the candidate's own, from its metrics.json
        if not str(returned.get("module_file") or "").startswith(str(folder)):
            record["warnings"].append(f"train_mps was imported from {returned.get('module_file')}, not {folder}")
        if metrics is None:
            record["warnings"].append(
                "no metrics.json in TRAIN_MPS_OUT_DIR: no whole-split val; the curve is what train.log prints"
            )
        elif metrics.get("seed") != seed:
            record["warnings"].append(f"metrics.json says seed {metrics.get('seed')}, not {seed}")
        if record.get("scored_module", "").startswith("trained ("):
            record["warnings"].append(f"scored the trained model: {record['scored_module']}")
    else:
        record["error"] = tail(log_path)
    (rdir / "running.json").unlink(missing_ok=True)
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


def ranked(r: dict) -> bool:
    """A run the summary ranks: finished, and no violation recorded (runs made before the trusted runner have no
    `violations` field: they rank on the candidate's own figures, flagged untrusted in benchmark.md)."""
    return r.get("status") == "ok" and not r.get("violations")


def summarize(runs: list[dict], labels: list[str], baseline: str) -> dict:
    """Per configuration: each metric over seeds; per seed differences against the baseline. Runs with
    violations are left out (listed under `excluded`)."""
    ok = {(r["config"], r["seed"]): r for r in runs if ranked(r)}
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
    trusted = any(r.get("trusted_fitness") is not None for r in ok.values())
    return {
        "baseline": baseline,
        "headline": "trusted_fitness" if trusted else "fitness",
        "trusted_fitness": f"trusted_test_loss + {TIME_WEIGHT} * trusted_elapsed_min",
        "fitness": f"best_vloss + {TIME_WEIGHT} * elapsed_min",
        "paired": "configuration - baseline on the same seed; negative = lower = better",
        "untrusted_runs": [
            f"{r['config']} seed {r['seed']}" for r in ok.values() if r.get("trusted_test_loss") is None
        ],
        "excluded": [
            {"config": r["config"], "seed": r["seed"], "violations": r["violations"]}
            for r in runs
            if r.get("violations")
        ],
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


def paired_table(summary: dict, labels: list[str], metrics: tuple, lower: str) -> list[str]:
    lines = [
        "| configuration | " + " | ".join(f"Δ {METRIC_TITLES[m]} median | per seed" for m in metrics) + " | lower |",
        "|---|" + "---|---|" * len(metrics) + "---|",
    ]
    for label in labels:
        p = summary["configs"][label].get("paired_vs_baseline")
        if p is None:
            continue
        cells = [f"`{md_cell(label)}`"]
        for m in metrics:
            digits = 2 if m.endswith("_min") else 4
            per_seed = ", ".join(f"s{sd}: {d:+.{digits}f}" for sd, d in zip(p[m]["seeds"], p[m]["diffs"]))
            cells += [fmt(p[m]["median"], digits) if p[m]["median"] is None else f"{p[m]['median']:+.{digits}f}"]
            cells += [per_seed or "n/a"]
        cells.append(f"{p[lower]['n_lower']}/{len(p[lower]['diffs'])}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


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
    headline = summary.get("headline", "fitness")
    trusted_fitness = summary.get("trusted_fitness", f"trusted_test_loss + {TIME_WEIGHT} * trusted_elapsed_min")
    lines += [
        f"Seeds {', '.join(map(str, s['seeds']))}; {how}, each in a fresh "
        f"subprocess; {n_ok} of {len(report['order'])} runs finished{'' if report.get('complete') else ' (INCOMPLETE)'}. "
        f"Ranked by **{headline}**. Lower is better everywhere. Cells: median (mean ± std) over seeds.",
        "",
        f"The trusted figures are the runner's: trusted test loss = its own cross-entropy of the trained model on the "
        f"held-out test split (the last {TEST_FRACTION:.0%} of val.bin's windows, which the candidate never sees), "
        f"trusted min = its clock around the import and train(), trusted fitness = {trusted_fitness}. The `own` "
        f"figures are the candidate's (its return value, fitness = {summary['fitness']}, and its metrics.json, on "
        "the part of the validation split it was given), kept for continuity. Runs with violations are not ranked.",
    ]
    untrusted = summary.get("untrusted_runs", [])
    if untrusted:
        lines += [
            "",
            f"> **UNTRUSTED: {len(untrusted)} run(s) predate the trusted runner ({md_cell(', '.join(untrusted))}): "
            "they carry only the candidate's own figures (own best_vloss, whole-split val, elapsed_min), as "
            "train() reported them, on the whole validation split; their trusted columns are n/a.**",
        ]
    lines += [
        "",
        "| configuration | n | " + " | ".join(METRIC_TITLES[m] for m in METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    for label in labels:
        c = summary["configs"][label]
        cells = [f"`{md_cell(label)}`", str(c["n"])]
        for m in METRICS:
            digits = 2 if m.endswith("_min") else 4
            cell = c.get(m, {})
            cells.append(f"{fmt(cell.get('median'), digits)} ({fmt_pm(cell, digits)})")
        lines.append("| " + " | ".join(cells) + " |")
    kn = (report.get("references") or {}).get("kneser_ney")
    if kn:
        row = ", ".join(f"n={n} {fmt(v)}" for n, v in kn["whole_split_val"].items())
        best = min(kn["whole_split_val"].values())
        test = kn.get("heldout_test")
        lines += [
            "",
            f"Reference, not a model: an interpolated modified Kneser-Ney n-gram fitted on the same train.bin "
            f"(`{kn['script']}`), whole-split val {row}; best **{fmt(best)}**."
            + (
                " On the held-out test split (as the trusted test loss): "
                + ", ".join(f"n={n} {fmt(v)}" for n, v in test.items())
                + "."
                if test
                else ""
            )
            + (
                " On the candidate's part of val (as its own figures): "
                + ", ".join(f"n={n} {fmt(v)}" for n, v in kn["candidate_val"].items())
                + "."
                if kn.get("candidate_val")
                else ""
            ),
        ]
    lines += [
        "",
        f"## Paired differences against `{md_cell(baseline)}`",
        "",
        "Configuration minus baseline on the same seed (negative = better); median, then the per-seed values; "
        f"'lower' counts the seeds on which the configuration's {headline} is lower.",
        "",
    ]
    if headline == "trusted_fitness":
        lines += paired_table(
            summary, labels, ("trusted_test_loss", "trusted_fitness", "trusted_elapsed_min"), headline
        )
        lines += ["", "The candidates' own figures (untrusted), for continuity:", ""]
    lines += paired_table(summary, labels, ("best_vloss", "val_loss_full", "fitness", "elapsed_min"), "fitness")
    excluded = summary.get("excluded", [])
    if excluded:
        lines += [
            "",
            "## Runs with violations (not ranked)",
            "",
            "| configuration | seed | violations |",
            "|---|---|---|",
        ]
        lines += [
            f"| `{md_cell(e['config'])}` | {e['seed']} | {md_cell('; '.join(e['violations']))} |" for e in excluded
        ]
    lines += [
        "",
        "## Runs (in execution order)",
        "",
        "| # | configuration | seed | status | trusted test loss | trusted min | steps | batches | "
        "own best_vloss | own whole-split val | own elapsed_min | wall min | own fitness | violations |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_key = {(r["config"], r["seed"]): r for r in report["runs"]}
    for o in report["order"]:
        r = by_key.get((o["config"], o["seed"]), {})
        shapes = ", ".join(f"{k}: {v}" for k, v in (r.get("training_batch_shapes") or {}).items()) or "n/a"
        violations = "n/a (untrusted run)" if "violations" not in r else str(len(r["violations"]))
        lines.append(
            f"| {o['index']} | `{md_cell(o['config'])}` | {o['seed']} | {r.get('status', 'pending')} | "
            f"{fmt(r.get('trusted_test_loss'))} | {fmt(r.get('trusted_elapsed_min'), 2)} | "
            f"{r.get('optimizer_steps', 'n/a')} | {shapes} | "
            f"{fmt(r.get('best_vloss'))} | {fmt(r.get('val_loss_full'))} | {fmt(r.get('elapsed_min'), 2)} | "
            f"{fmt(r.get('wall_min'), 2)} | {fmt(r.get('fitness'))} | {violations} |"
        )
    adapted: dict[str, list[str]] = {}  # per configuration, the adaptations of its first run (the same every seed)
    for r in report["runs"]:
        if r.get("adaptations") and r["config"] not in adapted:
            adapted[r["config"]] = [
                re.sub(r"'[^']*/runs/[^']*'", "<the run's data folder>", a) for a in r["adaptations"]
            ]
    if adapted:
        lines += ["", "## Adapted to run here (the DreamTeam original layout)", ""]
        for c, notes in adapted.items():
            lines += [f"- `{md_cell(c)}`:"] + [f"  - {md_cell(n)}" for n in notes]
    warnings = [(r["config"], r["seed"], w) for r in report["runs"] for w in r.get("warnings", [])]
    if warnings:
        lines += ["", "Warnings:", ""] + [f"- `{md_cell(c)}` seed {sd}: {w}" for c, sd, w in warnings]
    if report.get("resume_warnings"):
        lines += ["", "Kept by --resume from other sources:", ""]
        lines += [f"- WARNING: {md_cell(w)}" for w in report["resume_warnings"]]
    if report.get("merged_from"):
        lines += ["", "Merged from (runs made in separate benchmarks):", ""]
        for m in report["merged_from"]:
            lines.append(f"- `{md_cell(m['dir'])}`: {', '.join(m['runs']) or 'none'}")
            earlier = m.get("earlier") or {}
            lines += [  # a merged report merged again: where its runs came from, and under which labels
                f"  - itself merged from `{md_cell(e['dir'])}`: {', '.join(e['runs']) or 'none'}"
                for e in earlier.get("merged_from") or []
            ]
            lines += [
                f"  - whose runs labelled `{md_cell(k)}` were reported there as `{md_cell(v)}`"
                for k, v in (earlier.get("relabeled") or {}).items()
            ]
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


# an evaluation line as a candidate without metrics.json prints it: DreamTeam's "500: train 6.430  val 6.472",
# nanoGPT's "step 500: train loss 6.4300, val loss 6.4720", with anything after the val loss ("(lr=3.0e-04)")
PRINTED_EVAL = re.compile(
    r"^\s*(?:step\s+)?(\d+): train (?:loss )?[-+0-9.eE]+,?\s+val (?:loss )?([-+0-9.eEnaif]+)(?:[\s,(].*)?$"
)


def printed_curve(log_text: str) -> list[tuple[int, float]]:
    """(iteration, val loss) as the candidate printed its evaluations: the curve of a run without metrics.json."""
    points = []
    for line in log_text.splitlines():
        m = PRINTED_EVAL.match(line)
        if m:
            try:
                points.append((int(m[1]), float(m[2])))
            except ValueError:
                continue
    return points


def run_curve(run: dict, out: Path) -> tuple[list[tuple[int, float]], str]:
    """A run's val-loss curve and where it came from: its metrics.json history ('metrics'), else the evaluations
    its train.log prints ('printed', the candidate's own numbers), else none ('')."""
    history = (run.get("metrics") or {}).get("history") or []
    pts = [(h["iter"], h["val_loss"]) for h in history if "iter" in h and "val_loss" in h]
    if pts:
        return pts, "metrics"
    if run.get("log"):
        try:
            pts = printed_curve((out / run["log"]).read_text(errors="replace"))
        except OSError:
            pts = []
        if pts:
            return pts, "printed"
    return [], ""


def render_png(report: dict, out: Path) -> bytes | None:
    """Val loss vs iteration; thin lines per run, the per-iteration median over seeds bold.

    Left: the whole run; right: its second half, zoomed, where the configurations differ. A run without
    metrics.json (a candidate in DreamTeam's layout) is drawn from the evaluations its train.log in `out` prints."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    colors = plt.get_cmap("tab10")
    curves = []  # (label, color, runs' points, median points)
    sources = set()
    for i, label in enumerate(report["settings"]["configs"]):
        runs, by_iter = [], {}
        for r in report["runs"]:
            if r["config"] != label or r.get("status") != "ok":
                continue
            pts, source = run_curve(r, out)
            sources.add(source)
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
    title = "val loss; thin: runs, bold: median over seeds"
    if "printed" in sources:
        title += "\n(runs without metrics.json: the evaluations their train.log prints)"
    axes[0].set_title(title, fontsize=10)
    if not any(median for *_, median in curves):
        for ax in axes:
            ax.text(0.5, 0.5, "no run recorded a val-loss curve", ha="center", va="center", transform=ax.transAxes)
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
        data = render_png(report, out)
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
    p.add_argument(
        "--timeout-min",
        type=float,
        help="minutes a run may take before its process group is killed and it is recorded as a timeout "
        f"(default {FULL_TIMEOUT_MIN:g} for full runs; 5 + its share of that for --max-iters runs)",
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


def rejudge(record: dict, folder: Path, slack: float) -> dict:
    """A finished trusted run judged again by today's rules (judge_run) from the findings the runner saved beside it
    (returned.json), so that one merged report applies one set of rules. Runs made before the trusted runner, or
    whose findings are gone, are kept as recorded; a changed verdict keeps the old one in `rejudged_from`."""
    if "violations" not in record or record.get("expected_iters") is None:
        return record
    returned = load_record(folder / Path(record["log"]).parent / "returned.json")
    if not returned or "trusted" not in returned:
        return record
    r = {**record, "violations": []}
    judge_run(r, returned, record["expected_iters"], record.get("layout", "module"), slack)
    if r["violations"] != record["violations"]:
        r["rejudged_from"] = record["violations"]
    return r


def merge(a: argparse.Namespace, argv: list[str]) -> int:
    """One report from the finished runs of several benchmark folders: runs made side by side in
    separate processes, or on several days. Nothing is run; each run keeps its own record (sources'
    sha256, environment); a configuration whose sources differ between folders is reported."""
    if a.out is None:
        raise BenchmarkError("--merge needs --out (the folder of the merged report)")
    if a.resume or a.max_iters is not None or a.timeout_min is not None:
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
    references = reference_losses(Path(reports[0][1]["settings"]["data_dir"]))
    slack = vloss_slack(references)
    runs = {key: rejudge(r, origin[key], slack) for key, r in runs.items()}
    seeds = sorted({seed for _, seed in runs})
    used = {(c, d) for (c, _), d in origin.items()}  # a folder's details count only where its runs are taken
    details = {label: [(d, det) for d, det in dets if (label, d) in used] for label, dets in details.items()}
    warnings = []
    recipe_cls = builtin_recipe_class()
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
        "previous_environments": [
            e for _, r in reports for e in (r["environment"], *r.get("previous_environments", []))
        ],
        "settings": {
            **reports[0][1]["settings"],
            "configs": labels,
            "config_details": [det for label in labels for _, det in details.get(label, [])[:1]],
            "seeds": seeds,
            "baseline": baseline,
        },
        "merged_from": [  # a folder that was itself a merge keeps its own sources and relabels under `earlier`
            {
                "dir": str(d),
                "runs": [f"{c} seed {sd}" for (c, sd), o in origin.items() if o == d],
                **({"earlier": {k: r.get(k) for k in ("merged_from", "relabeled")}} if r.get("merged_from") else {}),
            }
            for d, r in reports
        ],
        "merge_warnings": warnings,
        "relabeled": relabel,
        "rejudged": [f"{c} seed {sd}" for (c, sd), r in runs.items() if "rejudged_from" in r],
        "references": references,
        "order": [{"index": i, "config": c, "seed": seed} for i, (c, seed) in enumerate(order)],
        "runs": [runs[k] for k in order],
        "complete": True,
        "finished_at": datetime.now().isoformat(timespec="seconds"),
    }
    if "trusted" in report["settings"]:
        report["settings"]["trusted"] = {**report["settings"]["trusted"], "vloss_slack": slack}
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
    except KeyboardInterrupt:
        print("[benchmark] interrupted: every training process group was killed; --resume finishes", flush=True)
        return 130


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
    if a.timeout_min is not None and not a.timeout_min > 0:
        raise BenchmarkError(f"--timeout-min must be > 0, got {a.timeout_min}")
    timeout_min = a.timeout_min if a.timeout_min is not None else default_timeout_min(a.max_iters)
    data_dir = (a.data_dir or DEFAULT_DATA_DIR).resolve()
    out = (a.out or DEFAULT_OUT_ROOT / datetime.now().strftime("%Y%m%d-%H%M%S")).resolve()

    env = environment(argv, data_dir)
    print_environment(env)

    tm = canonical_train_mps()
    configs = [parse_config(spec, builtin_recipe_class()) for spec in a.configs]
    missing = [f for f in ("train.bin", "val.bin") if not (data_dir / f).is_file()]
    if missing:
        raise BenchmarkError(
            f"{data_dir} lacks {', '.join(missing)}; prepare the data with `make data` or pass --data-dir"
        )
    split_validation((data_dir / "val.bin").stat().st_size // 2)  # room for the held-out test split

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
            current = {f: (Path(c.origin) / f).read_bytes() for f in source_files(c) if (Path(c.origin) / f).is_file()}
            if current != texts:
                print(
                    f"[benchmark] WARNING: {c.origin} changed since the benchmark started; "
                    f"resuming with the saved copy in {out / 'sources' / c.snapshot}",
                    flush=True,
                )
        sources[c.snapshot] = texts

    resume_warnings = kept_source_drift(records, configs, sources)
    for w in resume_warnings:
        print(f"[benchmark] WARNING: {w}", flush=True)
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
                    "sources_sha256": sources_sha256(sources[c.snapshot]),
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
            "timeout_min": timeout_min,
            "trusted": {
                "runner": "trusted-v1",
                "test_fraction": TEST_FRACTION,
                "vloss_slack": VLOSS_SLACK,
                "elapsed_slack": [ELAPSED_SLACK_REL, ELAPSED_SLACK_MIN],
                "fixed": FIXED,
            },
        },
        "order": [{"index": i, "config": c.label, "seed": seed} for i, c, seed in plan],
        "runs": [],
        "summary": {},
        "references": reference_losses(data_dir),
        "resume_warnings": resume_warnings,
        "complete": False,
    }
    slack = report["settings"]["trusted"]["vloss_slack"] = vloss_slack(report["references"])

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
    # A pool of `jobs` threads, each waiting on one subprocess: runs start in plan order as slots free up. An
    # interrupt (Ctrl-C, or SIGTERM turned into one) kills every training process group before it propagates.
    stopping = threading.Event()  # set on an interrupt: no new run starts, the running ones are recorded as interrupted
    previous_sigterm = None
    if threading.current_thread() is threading.main_thread():
        previous_sigterm = signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=a.jobs) as pool:
            shared = (out, data_dir, a.max_iters, threads, timeout_min, slack, stopping)
            futures = {
                pool.submit(announce_and_run, head, c, seed, i, *shared): (head, c, seed) for head, i, c, seed in todo
            }
            try:
                for future in concurrent.futures.as_completed(futures):
                    head, c, seed = futures[future]
                    r = records[(c.label, seed)] = future.result()
                    print(f"{head} {result_line(r)}", flush=True)
                    if r["status"] != "ok":
                        print("    " + str(r.get("error")).replace("\n", "\n    "), flush=True)
                    for v in r.get("violations", []):
                        print(f"    VIOLATION: {v}", flush=True)
                    save()
            except BaseException:
                stopping.set()
                pool.shutdown(wait=False, cancel_futures=True)
                n = kill_all_groups()
                print(f"[benchmark] stopping: killed {n} training process group(s)", flush=True)
                raise
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)

    failed = [r for r in report["runs"] if r["status"] != "ok"]
    violated = [r for r in report["runs"] if r.get("violations")]
    report["complete"] = not failed
    report["finished_at"] = datetime.now().isoformat(timespec="seconds")
    save()
    write_reports(report, out)
    print(render_markdown(report).split("\n## Runs")[0], flush=True)
    print(f"[benchmark] wrote {out / 'benchmark.json'}, benchmark.md, benchmark.png", flush=True)
    if failed:
        print(f"[benchmark] {len(failed)} run(s) failed; rerun with --resume --out {out} to retry them", flush=True)
    if violated:
        print(f"[benchmark] {len(violated)} run(s) broke the contract (violations above): not ranked", flush=True)
    return 1 if failed or violated else 0


def raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def announce_and_run(head: str, *args) -> dict:
    print(f"{head} started {datetime.now().strftime('%H:%M:%S')}", flush=True)
    return execute_run(*args)


def result_line(r: dict) -> str:
    if r.get("status") != "ok":
        return f"{r.get('status', 'failed').upper()} (exit {r.get('returncode')}) after {r['wall_s']:.1f} s; log {r['log']}"
    trusted = (
        f"trusted test {fmt(r.get('trusted_test_loss'))} | trusted min {fmt(r.get('trusted_elapsed_min'), 2)} | "
        f"steps {r.get('optimizer_steps')} | "
        if "violations" in r
        else ""
    )
    return (
        f"{trusted}own best_vloss {fmt(r.get('best_vloss'))} | whole-split val {fmt(r.get('val_loss_full'))} | "
        f"elapsed_min {fmt(r.get('elapsed_min'), 2)} | fitness {fmt(r.get('fitness'))} | wall {r['wall_s']:.1f} s"
        + (f" | {len(r['violations'])} VIOLATION(S)" if r.get("violations") else "")
    )


if __name__ == "__main__":
    sys.exit(main())
