"""Benchmark training configurations side by side: interleaved, one fresh sandboxed process per run, N seeds.

Each configuration is a folder holding `model.py` + `train_mps.py`, trained exactly as the harness trains a
candidate: a fresh Python process puts the folder first on sys.path, imports `train_mps` and calls `train()`
(with a `Recipe` override for the built-in recipes). Runs are interleaved per seed (seed 0: A, B, C; seed 1:
A, B, C; ...) on the same data and machine, so drifts in machine load hit every configuration alike.
`--jobs N` runs N at a time in that order (the cores shared out evenly): the losses are those of a run
alone; the times are contended, alike for every configuration, so compare them as ratios only. `--executor ray`
runs the training phases on a Ray cluster instead (odegpt_eval/executors.py); scoring stays here.

Configurations (`--configs`):
  baseline                       the seeds' starting point (specs.BASELINE_RECIPE) on the canonical files
  canonical                      train_mps.py as it stands, train() with no arguments
  canonical:FIELD=VALUE,...      canonical with Recipe fields overridden (for ablations)
  path/to/folder                 a candidate folder; refused unless scripts/check_constraints.py passes

The canonical files and every candidate's two files are copied into `<out>/sources/` when the benchmark
starts (what the harness does), so edits to the working tree during a benchmark of hours cannot mix two
versions of a recipe in one table; `--resume` reuses those copies.

Trusted scoring: the runner, not the candidate, produces every figure the benchmark ranks, outside every process
that runs candidate code (odegpt_eval/, README "Benchmark"):
  sandbox    the training child (odegpt_eval/children/train_child.py) runs in a sandbox (odegpt_eval/sandbox.py:
             bubblewrap on Linux; `none`, said loudly and marked UNTRUSTED, where there is none) that binds only
             the candidate's folder and data (read-only) and the run's out/ (writable); a PID namespace ends every
             process of the run with it.
  clock      the runner's own: trusted_elapsed_min runs from the sandbox's start to its end (imports, train(),
             anything left running, exit handlers, the export), plus scoring beyond its budget; train()'s span
             (timed as the child's frames arrive) is recorded beside it. The parent also keeps the run's whole wall
             time (wall_min: training and scoring).
  hooks      global torch hooks in the child (TrainingMonitor), installed before the candidate is imported. Model
             calls: the outermost module call whose first positional argument is a (B, T) integer tensor; in
             training mode with gradients on it is a training forward (its batch shape recorded), else an
             evaluation forward. Optimizer steps: every step() of every torch.optim optimizer; a run's step count
             is that of the optimizer holding the largest share of the trained model's parameters (the Muon recipe
             steps Muon and AdamW each iteration: one step). Below them, parameters' version counters and values
             (fused optimizers bump no counter) bound the steps taken. What the child reports arrives on a pipe as
             evidence, never as a ranked figure.
  the model  the trained model is the module with the most training forwards; the model scored is the module of
             the last evaluation forward when it has the trained model's architecture (an EMA copy, as train()
             evaluates and ends with), else the trained model. The child exports it (pickled) to the runner.
  held-out   the candidate's TRAIN_MPS_DATA_DIR is a runner-made folder (runs/<config>/seed<k>/data): train.bin
             as it is, val.bin the first windows of the validation split, cut at a block_size window boundary
             (TEST_FRACTION = 0.5 held out), and meta.json, where the source has one, with every count and
             sha256 of the split recomputed. The held-out test split, the rest, never enters a sandbox.
  scoring    trusted_test_loss: the mean cross-entropy over every non-overlapping 64-token window of the test
             split by the prefix protocol (odegpt_eval/scoring.py): a scoring child in its own sandbox loads the
             candidate's model.py and the exported model only, receives prefixes (for j = 1..64, window[:, :j]
             predicts token j) and returns the last position's logits; the runner holds the targets and computes
             the cross-entropy (logsumexp), and audits that the answers depend on nothing but each row's prefix.
             The same scoring of the candidate's half gives trusted_candidate_val_loss and the batch floor that
             the returned best_vloss is checked against (batch_floor, below).
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
  - the runner could not export or score the model (model(idx) does not return (b, t, vocab) logits) or its loss
    is not finite; the audit found answers that depend on more than each row's own prefix;
  - parameter writes implying more optimizer steps than iterations (steps the hooks did not see, a second
    optimizer), another model's parameters trained, an evidence channel that carried more than the child's report;
  - a timeout: every run has one (--timeout-min; default 4 h for full runs, 5 min + its share of 4 h for
    shortened ones). Each run is its own process group (start_new_session) and PID namespace; on a timeout, or an
    interrupt of the benchmark (Ctrl-C or SIGTERM), the sandbox is killed, and with it every process of the run.
A configuration whose seeds give the same trusted test loss to the last bit (it ignores the seed) is not ranked.
What stays best-effort (README): counts read inside the candidate's process (a reset version counter, a shadow
model dropped before train() returns, extra passes through a hand-written forward); the clock charges their time.

Reports per configuration every figure above: median, mean +- std over seeds, and the per-seed paired differences
against the baseline configuration with their median.

Outputs under --out (default results/benchmark/<timestamp>), each written atomically:
  benchmark.json   environment, settings, order, every run's record with its full metrics.json, summary
  benchmark.md     the tables
  benchmark.png    val loss vs iteration, one colour per configuration, the median over seeds bold
  runs/<config>/seed<k>/   train.log and score.log (the children's output), returned.json (the runner's
                           findings), model.pt (the exported model), data/ (the candidate's data folder), out/ (its
                           writable folder: metrics.json, ckpt.pt) and run.json (the record, signed, saved when the
                           run ends)
  .runner-key      the key run.json is signed with (odegpt_eval/signing.py); --resume keeps verified runs only

    python scripts/benchmark.py --configs baseline canonical                      # 3 seeds, full runs: hours
    python scripts/benchmark.py --configs canonical canonical:ema_decay=0.999,schedule=wsd path/to/cand --seeds 0 1 2 3
    python scripts/benchmark.py --configs baseline canonical --seeds 0 1 --max-iters 200   # smoke (SHORTENED)
    python scripts/benchmark.py --configs canonical canonical:optimizer=muon --jobs 2   # two runs at once, 1 thread each
    python scripts/benchmark.py --out results/benchmark/X --resume    # finish an interrupted benchmark
    python scripts/benchmark.py --configs baseline gen/* --executor ray --ray-address auto   # runs on a Ray cluster
    python scripts/benchmark.py --configs baseline canonical --sandbox bubblewrap   # refuse to run unconfined
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
import concurrent.futures
import dataclasses
import os
import signal
import sys
import threading
from datetime import datetime
from pathlib import Path

from . import executors, scoring, signing
from . import sandbox as sandboxes
from .environment import environment, print_environment
from .files import atomic_write_bytes, atomic_write_json, load_record
from .judge import ELAPSED_SLACK_MIN, ELAPSED_SLACK_REL, VLOSS_SLACK, vloss_slack
from .merge import merge
from .references import reference_losses
from .report import fmt, plot_only, render_markdown, write_reports
from .runs import (
    FULL_TIMEOUT_MIN,
    THREAD_VARS,
    default_timeout_min,
    execute_run,
    finished,
    run_dir,
    run_identity,
    threads_per_run,
)
from .specs import (
    FIXED,
    ROOT,
    TIME_WEIGHT,
    BenchmarkError,
    builtin_recipe_class,
    canonical_train_mps,
    check_train_mps,
    parse_config,
    source_files,
    source_texts,
    sources_sha256,
)
from .splits import TEST_FRACTION, split_validation
from .summary import summarize

DEFAULT_DATA_DIR = ROOT / "data" / "shakespeare"


DEFAULT_OUT_ROOT = ROOT / "results" / "benchmark"


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
    p.add_argument(
        "--sandbox",
        choices=sandboxes.SANDBOXES,
        default="auto",
        help="where candidate code runs (default auto: bubblewrap where it works, else none, said loudly and every "
        "run marked untrusted); bubblewrap: refuse to run without it",
    )
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="where the runs' training phases run: local (default, --jobs at a time) or ray (a Ray cluster: each "
        "run a task; scoring stays here, with the held-out half)",
    )
    p.add_argument("--ray-address", default="auto", help="with --executor ray: auto (default) or HOST:PORT")
    p.add_argument(
        "--gpus-per-run",
        type=float,
        default=0.0,
        help="with --executor ray: GPUs each run asks for (1 on CUDA workers)",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="threads of each run (OMP_NUM_THREADS, MKL_NUM_THREADS; with --executor ray, the CPUs each task asks "
        "for). Default: as the environment sets them, else cpu_count // jobs locally and 1 on Ray",
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
    if a.threads is not None and a.threads < 1:
        raise BenchmarkError(f"--threads must be >= 1, got {a.threads}")
    if a.executor == "local" and (a.ray_address != "auto" or a.gpus_per_run):
        raise BenchmarkError("--ray-address and --gpus-per-run go with --executor ray")
    if a.timeout_min is not None and not a.timeout_min > 0:
        raise BenchmarkError(f"--timeout-min must be > 0, got {a.timeout_min}")
    timeout_min = a.timeout_min if a.timeout_min is not None else default_timeout_min(a.max_iters)
    try:
        box, unconfined = sandboxes.choose(a.sandbox)
    except sandboxes.SandboxError as e:
        raise BenchmarkError(f"--sandbox {a.sandbox}: {e}") from None
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
    unsigned = []  # finished runs whose record the runner cannot verify: run again, never kept
    key = signing.key(out, create=False)
    for _, c, seed in plan:
        record = load_record(run_dir(out, c.label, seed) / "run.json")
        if not finished(record):
            continue
        if not a.resume:
            raise BenchmarkError(f"{out} already holds finished runs; pass --resume to keep them, or another --out")
        if not signing.verified(record, key):
            unsigned.append(f"{c.label} seed {seed}")
            continue
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

    executor = executors.make(a.executor, box, a.ray_address, a.gpus_per_run)  # a check too: can it run?
    resume_warnings = kept_source_drift(records, configs, sources)
    if unsigned:
        resume_warnings.append(
            f"{len(unsigned)} finished run(s) are run again: their run.json does not carry this runner's signature "
            f"under {out / signing.KEY_FILE} (planted, edited, or made before runs were signed): {', '.join(unsigned)}"
        )
    for w in resume_warnings:
        print(f"[benchmark] WARNING: {w}", flush=True)
    if unconfined:
        print(
            f"!!! [benchmark] NO SANDBOX: {unconfined}. Candidate code can read the held-out split and the "
            "runner's records; every run is marked UNTRUSTED in the report !!!",
            flush=True,
        )
    signing.key(out)
    for name, texts in sources.items():
        for f, data in texts.items():
            atomic_write_bytes(out / "sources" / name / f, data)
            os.chmod(out / "sources" / name / f, 0o444)  # read-only to everyone; no sandbox binds another's copy
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
            "executor": executor.describe(),
            "timeout_min": timeout_min,
            "trusted": {
                "runner": "trusted-v2-sandboxed",
                "sandbox": box.describe(),
                "scoring": {
                    "protocol": "prefixes in, last-position logits out; cross-entropy by the runner",
                    "rows_per_call": scoring.ROWS_PER_CALL,
                    "audit_calls": scoring.AUDIT_CALLS,
                    "audit_tolerance": scoring.AUDIT_TOLERANCE,
                    "budget_s": [scoring.SCORING_BASE_S, scoring.SCORING_PER_CALL_S],
                },
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
    if a.threads is not None:
        threads = {k: str(a.threads) for k in THREAD_VARS}
    elif a.executor == "ray" and not threads and not any(k in os.environ for k in THREAD_VARS):
        threads = {k: "1" for k in THREAD_VARS}
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
    in_flight = a.jobs if a.executor == "local" else max(a.jobs, len(todo), 1)  # on Ray, the cluster decides
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=in_flight) as pool:
            shared = (out, data_dir, a.max_iters, threads, timeout_min, slack, stopping, box)
            futures = {}
            for head, i, c, seed in todo:
                expected = sources_sha256(sources[c.snapshot])
                run = pool.submit(announce_and_run, head, c, seed, i, *shared, expected, executor.trainer)
                futures[run] = (head, c, seed)
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
                n = executor.cancel_all()
                print(f"[benchmark] stopping: killed {n} training process group(s)", flush=True)
                raise
    finally:
        executor.close()
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
