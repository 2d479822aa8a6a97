"""python -m parity_tests.report: the worst torch <-> JAX difference per check, as a table.

Runs the suite's checks over the suite's grids (harness.py) and prints, per check and quantity,
the worst difference over its cases, the case it came from and the tolerance (tolerances.py).
CPU, float64 (x64 on) plus the float32 subset; about as long as the pytest suite (compile time).
--quick runs one case per check. --json PATH also writes the rows."""

import argparse
import json
import os
import platform
import sys
import time


def _cases(quick: bool):
    from parity_tests import harness as H

    def pick(grid):
        return grid[:1] if quick else grid

    yield "tableau", [(n,) for n in pick(list(H.SOLVERS))], H.check_tableau
    yield "forward float64", pick(H.FORWARD_GRID), H.check_forward
    yield "forward float32", pick(H.FORWARD_GRID_F32), H.check_forward
    yield "forward + NFE (stats)", pick(H.STATS_GRID), lambda *c: H.check_forward_stats(*c)[0]
    yield "inference logits", [("rk4", "strang", 2, "float64")], H.check_inference_logits
    yield "shortlist head", pick(H.SHORTLIST_GRID), H.check_shortlist
    yield "regularizers", pick(H.REGULARIZER_GRID), H.check_regularizers
    yield "capacity levers", pick(H.CAPACITY_GRID), H.check_capacity
    yield "lr schedule", [(s,) for s in pick(["constant", "cosine", "wsd"])], H.check_lr
    yield "adamw 20 steps", [("adamw", "float64", "float64")], H.check_optimizer
    yield "muon 20 steps (f64 NS)", [("muon", "float64", "float64")], H.check_optimizer
    yield "muon 20 steps (bf16 NS)", [("muon", "float64", "bfloat16")], H.check_optimizer
    yield "ema", [("float64",)], H.check_ema
    yield "5 training steps", pick(H.TRAINING_GRID), H.check_training
    yield "order (parallel)", [(n,) for n in pick(list(H.SOLVERS))], lambda n: H.check_order(n)[0]
    yield "order (splittings, rk4)", [(s,) for s in pick(["lie", "strang"])], lambda s: H.check_splitting_order(s)[0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one case per check")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    a = p.parse_args(argv)

    import diffrax
    import flax
    import jax
    import optax
    import torch

    import parity_tests.conftest  # noqa: F401  (x64, CPU, the suite's compile flags)
    from parity_tests.tolerances import TOLERANCES

    print(
        f"python {platform.python_version()} | torch {torch.__version__} | jax {jax.__version__} | "
        f"flax {flax.__version__} | optax {optax.__version__} | diffrax {diffrax.__version__} | "
        f"{platform.machine()} {jax.default_backend()}",
        flush=True,
    )
    rows = []
    t_start = time.time()
    for check, cases, fn in _cases(a.quick):
        worst = {}  # quantity -> (diff, case, dtype)
        t0 = time.time()
        for case in cases:
            dtype = case[-1] if case and case[-1] in ("float32",) else "float64"
            for quantity, diff in fn(*case).items():
                key = (quantity, dtype)
                if key not in worst or diff > worst[key][0]:
                    worst[key] = (diff, case)
        for (quantity, dtype), (diff, case) in sorted(worst.items()):
            tolerance = TOLERANCES[dtype][quantity]
            rows.append(
                {
                    "check": check,
                    "quantity": quantity,
                    "dtype": dtype,
                    "worst": diff,
                    "tolerance": tolerance,
                    "ok": diff <= tolerance,
                    "cases": len(cases),
                    "worst_case": "-".join(map(str, case)),
                    "seconds": round(time.time() - t0, 1),
                }
            )
        print(f"  {check}: {len(cases)} cases, {time.time() - t0:.0f}s", file=sys.stderr, flush=True)

    header = f"{'check':<26} {'quantity':<13} {'dtype':<8} {'cases':>5} {'worst':>10} {'tolerance':>10}  ok  worst case"
    print(header + "\n" + "-" * len(header))
    for r in rows:
        print(
            f"{r['check']:<26} {r['quantity']:<13} {r['dtype']:<8} {r['cases']:>5} {r['worst']:>10.2e} "
            f"{r['tolerance']:>10.2g}  {'yes' if r['ok'] else 'NO ':<3} {r['worst_case']}"
        )
    print(f"{len(rows)} rows, {sum(not r['ok'] for r in rows)} over tolerance, {time.time() - t_start:.0f}s")
    if a.json:  # atomic: a temporary file beside the target, then a rename
        tmp = f"{a.json}.tmp"
        with open(tmp, "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(tmp, a.json)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
