"""The summary of a benchmark: per configuration each metric over seeds and the paired differences against the
baseline, leaving out runs with violations and configurations whose seed made no difference."""

from __future__ import annotations

import math
import statistics

from .specs import TIME_WEIGHT

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
    violations are left out (listed under `excluded`), and so are the runs of a configuration whose seed made no
    difference (seed_insensitive)."""
    seedless = seed_insensitive(runs)
    ok = {(r["config"], r["seed"]): r for r in runs if ranked(r) and r["config"] not in seedless}
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
        ]
        + [
            {"config": r["config"], "seed": r["seed"], "violations": [seedless[r["config"]]]}
            for r in runs
            if r["config"] in seedless and ranked(r)
        ],
        **({"unsandboxed_runs": unsandboxed} if (unsandboxed := unsandboxed_runs(ok.values())) else {}),
        "configs": configs,
    }


def seed_insensitive(runs: list[dict]) -> dict[str, str]:
    """Configurations whose clean runs at two or more seeds have the same trusted test loss to the last bit: a
    candidate that ignores the runner's seed (its seeds are one run counted several times). {label: the reason}."""
    by_label: dict[str, list] = {}
    for r in runs:
        if ranked(r) and r.get("trusted_test_loss") is not None:
            by_label.setdefault(r["config"], []).append(r)
    return {
        label: f"the seed made no difference: trusted test loss {rs[0]['trusted_test_loss']!r} at seeds "
        f"{', '.join(str(r['seed']) for r in sorted(rs, key=lambda r: r['seed']))} (the candidate ignores the seed)"
        for label, rs in by_label.items()
        if len({r["seed"] for r in rs}) >= 2 and len({r["trusted_test_loss"] for r in rs}) == 1
    }


def unsandboxed_runs(runs) -> list[str]:
    """Runs recorded as made without a sandbox (`sandbox.trusted` false): their figures are not to be trusted.
    Runs made before the sandbox (no `sandbox` record) are not listed here."""
    return [f"{r['config']} seed {r['seed']}" for r in runs if (r.get("sandbox") or {}).get("trusted") is False]
