"""The three depth-ODE studies end to end on a tiny random checkpoint, plus their numerical kernels.

A 2-layer, C=16 model saved in train_mps.py's checkpoint format and a small synthetic val.bin; each
study's main() runs in-process with its smallest settings. Fast: a few seconds in all.
"""

import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT)]

import phase_portrait  # noqa: E402
import solver_study  # noqa: E402
import stability_report  # noqa: E402
from _study_common import StudyError, load_checkpoint, val_batches  # noqa: E402

from model import GPT, GPTConfig  # noqa: E402
from parity_tests import tolerances as T  # noqa: E402

# torch.func.jvp's first use imports torch._decomp.decompositions_for_jvp, which calls the deprecated
# torch.jit.script: torch's warning, not ours
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

N_LAYER, N_EMBD, N_HEAD, VOCAB, BLOCK = 2, 16, 2, 256, 64


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """(ckpt path, data dir): a tiny random GPT in train_mps's checkpoint format and 3000 random val tokens."""
    root = tmp_path_factory.mktemp("studies")
    torch.manual_seed(0)
    config = GPTConfig(
        n_layer=N_LAYER,
        n_embd=N_EMBD,
        n_head=N_HEAD,
        vocab_size=VOCAB,
        block_size=BLOCK,
        bias=True,
        solver="euler",
        steps_per_layer=1,
        splitting="lie",  # nanoGPT's block: the studies' trained integrator
    )
    model = GPT(config)
    with torch.no_grad():  # 2x GPT-2's init: a flow far enough from the identity for errors well above round-off,
        for name, p in model.named_parameters():  # yet mild enough that 1..8 steps are in the asymptotic regime
            if name.endswith(("c_proj.weight", "c_fc.weight", "c_attn.weight")):
                p.mul_(2.0)
    ckpt = {"model": model.state_dict(), "model_args": asdict(config), "iter_num": 0, "metrics": {"iters": 0}}
    torch.save(ckpt, root / "ckpt.pt")
    data = root / "data"
    data.mkdir()
    np.random.default_rng(0).integers(0, VOCAB, 3000).astype(np.uint16).tofile(data / "val.bin")
    return root / "ckpt.pt", data


def common_args(inputs, out_dir, batches=1, batch_size=2):
    ckpt, data = inputs
    return [
        "--ckpt",
        str(ckpt),
        "--data-dir",
        str(data),
        "--out-dir",
        str(out_dir),
        "--batches",
        str(batches),
        "--batch-size",
        str(batch_size),
    ]


def assert_outputs(out_dir, study, keys):
    js, png = out_dir / f"{study}.json", out_dir / f"{study}.png"
    assert js.exists() and png.exists() and png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import json

    results = json.loads(js.read_text())
    assert set(keys) <= set(results), set(keys) - set(results)
    assert {"environment", "args", "checkpoint", "wall_s"} <= set(results["run"])
    return results


# ---------------------------------------------------------------------------------------------
# solver_study


@pytest.fixture(scope="module")
def solver_results(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("solver_out")
    results = solver_study.main(common_args(inputs, out) + ["--ref-steps", "64"])
    return out, results


def test_solver_study_outputs(solver_results):
    out, _ = solver_results
    results = assert_outputs(out, "solver_study", ["note", "reference", "configs", "orders", "trained_integrator"])
    assert "lie" in results["note"] and "first order" in results["note"]
    assert len(results["configs"]) == 8 * 3 * 4
    row = results["configs"][0]
    assert {"solver", "splitting", "steps_per_layer", "nfe", "rel_error", "val_loss"} <= set(row)


def test_solver_study_parallel_converges(solver_results):
    _, results = solver_results
    err = {(r["solver"], r["splitting"], r["steps_per_layer"]): r["rel_error"] for r in results["configs"]}
    assert results["reference"]["rel_error_estimate"] < 1e-9
    for solver in ("euler", "midpoint", "bosh3", "rk4", "rk4_38"):
        errs = [err[(solver, "parallel", n)] for n in (1, 2, 4, 8)]
        assert all(a > b for a, b in zip(errs, errs[1:])), (solver, errs)
    for n in (1, 2, 4, 8):
        assert err[("rk4", "parallel", n)] < err[("euler", "parallel", n)]
    orders = {(o["solver"], o["splitting"]): o["fitted_order"] for o in results["orders"]}
    assert orders[("rk4", "parallel")] > 3.5
    assert orders[("midpoint", "strang")] == pytest.approx(2.0, abs=0.3)
    assert orders[("rk4", "lie")] == pytest.approx(1.0, abs=0.2)  # rk4 under lie is a first-order method


def test_solver_study_loss_matches_forward(inputs, solver_results):
    """The study's val loss of the trained integrator is the model's own forward loss on the same windows."""
    _, results = solver_results
    model, _ = load_checkpoint(inputs[0])
    tokens = np.fromfile(inputs[1] / "val.bin", dtype=np.uint16)
    batches = val_batches(tokens, 1, 2, BLOCK, seed=0)
    with torch.no_grad():
        loss = float(np.mean([model(x, y)[1].item() for x, y in batches]))
    (row,) = [r for r in results["configs"] if r["trained_config"]]
    assert (row["solver"], row["splitting"], row["steps_per_layer"]) == ("euler", "lie", 1)
    # the study integrates in float64 and scores in float32: within twice the float32 bound (parity_tests/tolerances)
    assert row["val_loss"] == pytest.approx(loss, abs=2 * T.model_loss(model, sum(y.numel() for _, y in batches), loss))


def test_solver_study_plot_only(inputs, solver_results):
    out, _ = solver_results
    (out / "solver_study.png").unlink()
    solver_study.main(common_args(inputs, out) + ["--plot-only"])
    assert (out / "solver_study.png").stat().st_size > 10_000


# ---------------------------------------------------------------------------------------------
# stability_report


def test_stability_polynomials():
    euler = stability_report.stability_coefficients("euler")
    assert abs(stability_report.poly_eval(euler, -2.0)) == pytest.approx(1.0, abs=1e-12)  # on the boundary
    assert stability_report.max_stable_step(euler, -1.0) == pytest.approx(2.0, abs=1e-6)
    assert stability_report.max_stable_step(stability_report.stability_coefficients("rk4"), -1.0) == pytest.approx(
        2.785, abs=1e-3
    )
    assert stability_report.max_stable_step(euler, 0.5) == 0.0  # a growing mode
    groups = {tuple(g["solvers"]) for g in stability_report.stability_groups(solver_study.TABLEAUX)}
    assert groups == {("euler",), ("midpoint", "heun", "ralston"), ("bosh3", "kutta3"), ("rk4", "rk4_38")}


def test_arnoldi_spectral_radius_matches_dense(inputs):
    """Arnoldi on jvps with fewer Krylov vectors than dimensions finds the dense Jacobian's spectral radius."""
    model, _ = load_checkpoint(inputs[0])
    model = model.double()
    block = model.transformer.h[0]
    x = model.embed(torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(1)))  # (1, 6, 16)
    n = x.numel()
    J = torch.autograd.functional.jacobian(block.both_field, x).reshape(n, n)
    dense = np.linalg.eigvals(J.numpy())
    v0 = torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ritz, _ = stability_report.arnoldi(stability_report.jvp_operator(block.both_field, x), v0, m=30)
    assert np.abs(ritz).max() == pytest.approx(np.abs(dense).max(), rel=0.03)
    # the vmapped-jvp Jacobian and its causal block spectrum are the same matrix and the same spectrum
    Jv = stability_report.dense_jacobian(block.both_field, x, chunk=32)
    torch.testing.assert_close(Jv, J)
    blocks, upper = stability_report.causal_block_spectrum(Jv, x.shape[1], x.shape[2])
    assert upper < 1e-12
    assert np.sort(np.abs(blocks)) == pytest.approx(np.sort(np.abs(dense)), abs=1e-9)


def test_stability_report(inputs, tmp_path):
    results = stability_report.main(
        common_args(inputs, tmp_path, batch_size=1) + ["--krylov", "20", "--leading", "4", "--jvp-chunk", "512"]
    )
    results = assert_outputs(tmp_path, "stability_report", ["groups", "layers", "h_ckpt", "note"])
    assert len(results["layers"]) == N_LAYER
    for layer in results["layers"]:
        assert {"spectral_radius", "leading", "dense", "stability"} <= set(layer)
        assert set(layer["stability"]) == set(solver_study.TABLEAUX)
        assert layer["spectral_radius"] > 0
        # one sequence, so Arnoldi and the exact block spectrum see the same matrix (Ritz values of a non-normal
        # matrix may land slightly outside its spectrum, so no one-sided bound)
        assert layer["spectral_radius"] == pytest.approx(layer["dense"]["spectral_radius"], rel=0.05)


# ---------------------------------------------------------------------------------------------
# phase_portrait


def test_phase_portrait(inputs, tmp_path):
    results = phase_portrait.main(common_args(inputs, tmp_path) + ["--steps", "4", "--tokens", "3"])
    results = assert_outputs(
        tmp_path, "phase_portrait", ["times", "mean_norm_x", "mean_velocity", "mean_cos_within", "pca", "trajectories"]
    )
    assert len(results["times"]) == len(results["mean_norm_x"]) == N_LAYER * 4 + 1
    velocities = np.array(results["mean_velocity"])
    assert velocities.shape == (N_LAYER, 5) and (velocities > 0).all()
    assert all(-1 - 1e-9 <= c <= 1 + 1e-9 for layer in results["mean_cos_within"] for c in layer)
    assert len(results["trajectories"]) == 3
    assert len(results["trajectories"][0]["fine_pc"]) == N_LAYER * 4 + 1
    ev = results["pca"]["explained_variance_ratio"]
    assert all(a >= b > 0 for a, b in zip(ev, ev[1:])) and sum(ev) <= 1 + 1e-9


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("study", [solver_study, stability_report, phase_portrait])
def test_missing_checkpoint_names_make_train(study, inputs, tmp_path):
    args = common_args(inputs, tmp_path)
    args[1] = str(tmp_path / "nope.pt")
    with pytest.raises(StudyError, match="make train"):
        study.main(args)


def test_cli_missing_checkpoint_exits_cleanly(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "phase_portrait.py"), "--ckpt", str(tmp_path / "nope.pt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "make train" in proc.stderr and "Traceback" not in proc.stderr
