"""train_mps.py under the harness contract: copied-folder import, seeding, outputs, bad data."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import REPO, write_bins

import levers
import train_mps
from model import GPT, GPTConfig
from parity_tests import tolerances as T

SHORT = "12"


def test_harness_imports_copied_files_alone(synthetic_data, tmp_path):
    """The harness copies the two files into a bare folder, imports train_mps and calls train()."""
    candidate = tmp_path / "candidate"
    candidate.mkdir()
    for name in ("model.py", "train_mps.py"):
        shutil.copy(REPO / name, candidate / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAIN_MPS_")}
    env.update(TRAIN_MPS_DATA_DIR=str(synthetic_data), TRAIN_MPS_MAX_ITERS="101", PYTHONPATH="")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import train_mps; "
        "assert train_mps.__file__.startswith(sys.argv[1]); r = train_mps.train(); "
        "assert type(r) is tuple and len(r) == 2 and all(type(v) is float for v in r), r; "
        "assert 'levers' not in sys.modules; print('RESULT', r)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(candidate)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "RESULT" in proc.stdout
    assert "TRAIN_MPS_MAX_ITERS=101" in proc.stderr and "SHORT" in proc.stderr  # announced loudly
    assert "iter   100" in proc.stdout  # evaluation every 100 iterations
    assert (candidate / "out" / "metrics.json").exists() and (candidate / "out" / "ckpt.pt").exists()


def test_import_has_no_side_effects(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", "import train_mps, model"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""
    assert list(tmp_path.iterdir()) == []


def test_same_seed_same_numbers_other_seed_other_numbers(run_env, monkeypatch):
    first = train_mps.train()
    metrics_a = json.loads((run_env / "metrics.json").read_text())
    second = train_mps.train()
    metrics_b = json.loads((run_env / "metrics.json").read_text())
    assert first[0] == second[0] and metrics_a["val_loss_full"] == metrics_b["val_loss_full"]
    monkeypatch.setenv("TRAIN_MPS_SEED", "7")
    third = train_mps.train()
    metrics_c = json.loads((run_env / "metrics.json").read_text())
    assert metrics_c["seed"] == 7 and metrics_c["val_loss_full"] != metrics_a["val_loss_full"]
    assert third[0] != first[0]


def test_metrics_and_checkpoint_reproduce_the_whole_split_loss(run_env, synthetic_data):
    train_mps.train()
    metrics = json.loads((run_env / "metrics.json").read_text())
    for key in ("best_vloss", "elapsed_min", "val_loss_full", "seed", "recipe", "history", "sources_sha256"):
        assert key in metrics
    assert metrics["iters"] == int(SHORT)
    ckpt = torch.load(run_env / "ckpt.pt", map_location="cpu", weights_only=False)
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    val = torch.from_numpy(np.fromfile(synthetic_data / "val.bin", dtype=np.uint16).astype(np.int64))
    # an independent whole-split loss: every non-overlapping 64-token window, one at a time
    n = (len(val) - 1) // 64
    losses = []
    with torch.no_grad():
        for w in range(n):
            chunk = val[w * 64 : w * 64 + 65][None]
            losses.append(model.eval()(chunk[:, :-1], chunk[:, 1:])[1].item())
    # float32, one window at a time against batches of 64: within twice the derived bound (parity_tests/tolerances)
    bound = 2 * T.model_loss(model, n * 64, metrics["val_loss_full"])
    assert np.mean(losses) == pytest.approx(metrics["val_loss_full"], abs=bound)


@pytest.mark.parametrize(
    "recipe",
    [
        dict(optimizer="muon", ema_decay=0.9),
        dict(solver="heun", splitting="parallel", kinetic_energy=0.01, jacobian_frobenius=0.01),
        dict(schedule="cosine", zero_init_proj=True, grad_clip=0.0),
    ],
    ids=["muon-ema", "heun-regularized", "cosine-zeroinit-noclip"],
)
def test_recipe_switches_train(run_env, recipe):
    best, minutes = train_mps.train(replace(levers.LeverRecipe(), **recipe))
    assert np.isfinite(best) and minutes > 0


def test_lr_schedules():
    r = train_mps.Recipe(learning_rate=3e-3, min_lr=3e-4, warmup_iters=200, schedule="cosine")
    total = 10001
    warm = [train_mps.lr_at(s, total, r) for s in range(200)]
    assert all(a < b for a, b in zip(warm, warm[1:])) and warm[-1] == 1.0
    assert train_mps.lr_at(total - 1, total, r) == pytest.approx(0.1, abs=1e-6)
    cosine = [train_mps.lr_at(s, total, r) for s in range(200, total)]
    assert all(a >= b for a, b in zip(cosine, cosine[1:]))
    wsd = replace(r, schedule="wsd", decay_frac=0.2)
    assert train_mps.lr_at(7000, total, wsd) == 1.0 and train_mps.lr_at(total - 1, total, wsd) == pytest.approx(
        0.1, abs=1e-3
    )
    assert train_mps.lr_at(5000, total, replace(r, schedule="constant")) == 1.0
    with pytest.raises(ValueError, match="cosine"):
        train_mps.lr_at(300, total, replace(r, schedule="linear"))


# --- bad data: a clear error naming the fix, before any training ---------------------------------


def corrupt(folder, how):
    if how == "missing-dir":
        shutil.rmtree(folder)
    elif how == "missing-val":
        (folder / "val.bin").unlink()
    elif how == "odd-size":
        with open(folder / "train.bin", "ab") as f:
            f.write(b"\x00")
    elif how == "truncated-vs-meta":
        (folder / "meta.json").write_text(json.dumps({"train_tokens": 999999, "val_tokens": 1000}))
    elif how == "token-out-of-vocab":
        np.full(2000, 60000, dtype=np.uint16).tofile(folder / "val.bin")
    elif how == "too-short":
        np.zeros(10, dtype=np.uint16).tofile(folder / "val.bin")


@pytest.mark.parametrize(
    "how, message",
    [
        ("missing-dir", "tried"),
        ("missing-val", "tried"),
        ("odd-size", "odd size"),
        ("truncated-vs-meta", "meta.json says"),
        ("token-out-of-vocab", "60000"),
        ("too-short", "fewer than"),
    ],
)
def test_bad_data_is_a_clear_error_before_training(run_env, synthetic_data, capsys, how, message):
    corrupt(synthetic_data, how)
    with pytest.raises(train_mps.DataError, match=message) as err:
        train_mps.train()
    assert "prepare" in str(err.value)  # names the fix
    assert "iter" not in capsys.readouterr().out  # nothing trained
    assert not run_env.exists()  # nothing written


def test_default_data_dir_is_beside_the_file(monkeypatch, tmp_path):
    monkeypatch.delenv("TRAIN_MPS_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    found_or_error = None
    try:
        found_or_error = train_mps.find_data_dir()
    except train_mps.DataError as e:
        found_or_error = str(e)
        assert str(REPO / "data" / "shakespeare") in found_or_error
    if isinstance(found_or_error, os.PathLike):
        assert found_or_error == REPO / "data" / "shakespeare"


def test_write_bins_helper_matches_the_format(tmp_path):
    folder = write_bins(tmp_path / "d", n_train=100, n_val=80)
    assert (folder / "train.bin").stat().st_size == 200


def test_model_selection_ends_with_the_weights_of_the_best_window(run_env, monkeypatch):
    monkeypatch.setattr(train_mps, "eval_interval", 3)  # 12 iterations: evaluations at 0, 3, 6, 9
    levers.train(replace(levers.LeverRecipe(), select_window=2, learning_rate=3e-2))
    m = json.loads((run_env / "metrics.json").read_text())
    v = [h["val_loss"] for h in m["history"]]
    means = {h["iter"]: (v[i - 1] + v[i]) / 2 for i, h in enumerate(m["history"]) if i >= 1}
    expected = min(means, key=lambda it: (means[it], it))
    assert m["selected_iter"] == expected
    ckpt = torch.load(run_env / "ckpt.pt", map_location="cpu", weights_only=False)
    assert ckpt["iter_num"] == expected
    assert m["val_loss_full"] != m["val_loss_full_last_weights"]  # selected weights, not the last ones


def test_no_model_selection_ends_with_the_last_weights(run_env, monkeypatch):
    monkeypatch.setattr(train_mps, "eval_interval", 3)
    levers.train(replace(levers.LeverRecipe(), select_window=0))
    m = json.loads((run_env / "metrics.json").read_text())
    assert m["selected_iter"] == int(SHORT)
    assert m["val_loss_full"] == m["val_loss_full_last_weights"]


@pytest.mark.parametrize("bad", [-1, 2.5, True])
def test_bad_select_window_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="select_window must be an integer >= 0"):
        levers.LeverRecipe(select_window=bad)
