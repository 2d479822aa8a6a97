"""End to end across the two trainers: a checkpoint written by train_mps.train() gives the torch loss
through jax_impl.forward, and `python -m jax_impl.train` trains (adaptive tsit5), reports its NFE and
writes a checkpoint that model.py loads. Both run the canonical recipe: a shortlist softmax over the
tokens of train.bin."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jax_impl
import levers
import train_mps
from jax_impl.train import full_split_loss
from parity_tests import tolerances as T

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_data(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rng.integers(0, 50257, 4000).astype(np.uint16).tofile(folder / "train.bin")
    rng.integers(0, 50257, 1000).astype(np.uint16).tofile(folder / "val.bin")
    return folder


def _load(ckpt_path):
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    model = levers.model_from_args(ckpt["model_args"])
    model.load_state_dict(ckpt["model"], strict=True)
    return ckpt, model.eval()


def test_torch_checkpoint_through_jax_forward_gives_the_torch_loss(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("TRAIN_MPS_DATA_DIR", str(tiny_data))
    monkeypatch.setenv("TRAIN_MPS_OUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("TRAIN_MPS_MAX_ITERS", "20")
    monkeypatch.delenv("TRAIN_MPS_SEED", raising=False)
    train_mps.train()
    ckpt, model = _load(tmp_path / "out" / "ckpt.pt")
    assert ckpt["model_args"]["shortlist_size"] > 0  # the canonical recipe's shortlist
    jconfig = jax_impl.config_from_torch(ckpt["model_args"], ckpt["model"])
    params = jax_impl.params_from_torch(ckpt["model"], jconfig)  # float32, as trained

    val = np.fromfile(tiny_data / "val.bin", dtype=np.uint16).astype(np.int64)
    windows = val[: 8 * 64 + 1]
    x, y = windows[:-1].reshape(8, 64), windows[1:].reshape(8, 64)
    with torch.no_grad():
        _, t_loss = model(torch.from_numpy(x), torch.from_numpy(y))
        t_logp, _ = model(torch.from_numpy(x))  # (8, 1, vocab) log-probabilities
    _, j_loss = jax_impl.forward(params, jconfig, jnp.asarray(x), jnp.asarray(y))
    j_logp, _ = jax_impl.forward(params, jconfig, jnp.asarray(x))
    # float32 on both sides: within twice the bound derived for one side (tolerances.py)
    assert abs(float(j_loss) - t_loss.item()) <= 2 * T.model_loss(model, y.size, t_loss.item())
    assert np.max(np.abs(np.asarray(j_logp) - t_logp.numpy())) <= 2 * T.model_log_probs(model)
    # the whole-split loss train_mps reported, recomputed by the JAX trainer's evaluation
    j_full = full_split_loss(params, jconfig, val.astype(np.uint16), train_mps.block_size)
    full = ckpt["metrics"]["val_loss_full"]
    assert abs(j_full - full) <= 2 * T.model_loss(model, (len(val) - 1) // 64 * 64, full)


def test_jax_train_with_tsit5_reports_nfe_and_writes_a_torch_checkpoint(tiny_data, tmp_path):
    out = tmp_path / "jax_out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAIN_MPS_", "JAX_", "XLA_"))}
    env.update(TRAIN_MPS_DATA_DIR=str(tiny_data), PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "jax_impl.train", "--solver", "tsit5", "--splitting", "parallel"]
    cmd += ["--max-iters", "3", "--out-dir", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "SHORT run" in proc.stderr and "NFE" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model_config"]["solver"] == "tsit5"
    # tsit5 is FSAL with 6 evaluations of A and of M per step, >= 1 step per layer, 4 layers
    assert metrics["nfe_per_forward"] >= 4 * 2 * 6
    assert np.isfinite(metrics["best_vloss"]) and np.isfinite(metrics["val_loss_full"])
    ckpt, model = _load(out / "ckpt.pt")  # model.py has no adaptive solver: the checkpoint says rk4
    assert ckpt["model_args"]["solver"] == "rk4"
    # train_mps's shortlist for the same train.bin
    train_tokens = np.fromfile(tiny_data / "train.bin", np.uint16)
    ids, unseen_mass = train_mps.train_vocabulary(train_tokens, train_mps.Recipe().vocab_size)
    assert np.array_equal(model.row_tokens.numpy(), ids) and ckpt["model_args"]["unseen_mass"] == unseen_mass
    assert metrics["model_config"]["shortlist_size"] == len(ids)
    jconfig = jax_impl.config_from_torch(ckpt["model_args"], ckpt["model"])
    back = jax_impl.params_to_torch(jax_impl.params_from_torch(ckpt["model"], jconfig), jconfig)
    assert list(back) == list(ckpt["model"]) and all(torch.equal(back[k], v) for k, v in ckpt["model"].items())


def test_jax_fine_tunes_a_torch_checkpoint_under_another_integrator(tiny_data, tmp_path, monkeypatch):
    """--init-from: the JAX trainer starts from the torch checkpoint's weights (its first evaluation is the torch
    model's loss under the JAX run's integrator, on the same batch), and refuses a checkpoint that does not fit."""
    from jax_impl.train import train as jax_train

    monkeypatch.setenv("TRAIN_MPS_DATA_DIR", str(tiny_data))
    monkeypatch.setenv("TRAIN_MPS_OUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("TRAIN_MPS_MAX_ITERS", "20")
    monkeypatch.delenv("TRAIN_MPS_SEED", raising=False)
    train_mps.train()
    ckpt_path = tmp_path / "out" / "ckpt.pt"
    _, model = _load(ckpt_path)
    jax_train(solver="rk4", steps=2, splitting="parallel", max_iters=1, init_from=ckpt_path, out_dir=tmp_path / "jax")
    metrics = json.loads((tmp_path / "jax" / "metrics.json").read_text())
    assert metrics["init"] == f"checkpoint {ckpt_path}"
    val = torch.from_numpy(np.fromfile(tiny_data / "val.bin", dtype=np.uint16).astype(np.int64))
    xv, yv = train_mps.get_batch(val, torch.Generator().manual_seed(train_mps.Recipe().seed + 1_000_003))
    model.set_integrator(solver="rk4", steps_per_layer=2, splitting="parallel")
    with torch.no_grad():
        _, t_loss = model(xv, yv)
    assert abs(metrics["history"][0]["val_loss"] - t_loss.item()) <= 2 * T.model_loss(model, yv.numel(), t_loss.item())

    with pytest.raises(ValueError, match="no such file"):
        jax_train(max_iters=1, init_from=tmp_path / "none.pt", out_dir=tmp_path / "jax")
    ckpt = torch.load(ckpt_path, weights_only=False)
    ckpt["model"]["row_tokens"] = ckpt["model"]["row_tokens"].flip(0)
    torch.save(ckpt, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="another train.bin"):
        jax_train(max_iters=1, init_from=tmp_path / "other.pt", out_dir=tmp_path / "jax")
