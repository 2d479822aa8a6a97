"""Safe failure (issue #15, item 4): every way a run can go wrong stops it with an error naming the fix,
before any work where it can be known before, and never leaves a half-written or mismatched output."""

import hashlib
import importlib.util
import json
import math
import os
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, write_bins

import levers
import train_mps
from model import GPTConfig

SHORT = "3"


def snapshot(folder):
    """Every entry under `folder` (links as links) and the bytes of every regular file: a listing that
    shows any temp file, any new run folder and any changed byte."""
    entries = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if os.path.islink(path):
                entries[rel] = ("link", os.readlink(path))
            elif os.path.isfile(path):
                entries[rel] = ("file", hashlib.sha256(open(path, "rb").read()).hexdigest())
            else:
                entries[rel] = ("dir",)
    return entries


def read_pair(out):
    """(metrics.json, the checkpoint's embedded metrics), read at the documented paths."""
    metrics = json.loads((out / "metrics.json").read_text())
    ckpt = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=False)
    return metrics, ckpt["metrics"]


def assert_matched(out):
    metrics, embedded = read_pair(out)
    assert json.dumps(metrics, sort_keys=True) == json.dumps(embedded, sort_keys=True)
    return metrics


# --- 1. a non-finite loss stops the run and writes nothing ----------------------------------------------


def nan_step(*args, **kwargs):
    return torch.tensor(float("nan"))


@pytest.mark.parametrize(
    "how",
    ["real-divergence", "nan-train-step", "nan-val-loss"],
)
def test_non_finite_loss_stops_and_writes_nothing(run_env, monkeypatch, how):
    train_mps.train()  # a good pair to keep
    before = snapshot(run_env)
    recipe = train_mps.Recipe()
    if how == "real-divergence":  # no warmup, no clipping: lr 50 blows up within 3 steps
        recipe = train_mps.Recipe(learning_rate=50.0, warmup_iters=0, grad_clip=0.0)
    elif how == "nan-train-step":
        monkeypatch.setattr(train_mps, "train_step", nan_step)
    else:  # the evaluation's loss (eval mode) is NaN
        real_forward = train_mps.GPT.forward

        def forward(self, idx, targets=None):
            logits, loss = real_forward(self, idx, targets)
            if not self.training and loss is not None:
                loss = loss * float("nan")
            return logits, loss

        monkeypatch.setattr(train_mps.GPT, "forward", forward)
    with pytest.raises(train_mps.DivergedError) as err:
        train_mps.train(recipe)
    message = str(err.value)
    assert "learning_rate" in message and "grad_clip" in message and "iteration" in message
    assert f"the {'val' if how == 'nan-val-loss' else 'train'} loss is nan" in message
    assert snapshot(run_env) == before  # byte-identical, no temp file, no new run folder
    assert_matched(run_env)


def test_the_loss_check_reads_no_extra_loss(run_env, monkeypatch):
    """The check uses the losses train() already reads: with 250 iterations, the train loss is read (and
    checked) at iterations 99, 199 and 249 only, never per step (no host sync per MPS step)."""
    monkeypatch.setenv("TRAIN_MPS_MAX_ITERS", "250")
    checked = []
    real = train_mps.check_finite
    monkeypatch.setattr(train_mps, "check_finite", lambda loss, what, it, r: checked.append((what, it)))
    monkeypatch.setattr(train_mps, "train_step", nan_step)  # fast: no model steps
    train_mps.train()
    assert [it for what, it in checked if what == "train"] == [99, 199, 249]
    assert [it for what, it in checked if what == "val"] == [0, 100, 200]
    with pytest.raises(train_mps.DivergedError, match="whole-split val loss is inf at iteration 250"):
        real(float("inf"), "whole-split val", 250, train_mps.Recipe())


# --- 2 and 8. environment variables that do not parse ----------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-5", "abc", "1.5", " "])
def test_bad_max_iters_is_a_clear_error_before_any_work(run_env, monkeypatch, capsys, value):
    monkeypatch.setenv("TRAIN_MPS_MAX_ITERS", value)
    monkeypatch.setattr(train_mps, "find_data_dir", lambda: pytest.fail("read the data before the settings"))
    with pytest.raises(ValueError) as err:
        train_mps.train()
    assert f"TRAIN_MPS_MAX_ITERS={value.strip() if value.strip() in ('0', '-5') else repr(value)}" in str(err.value)
    assert ">= 1" in str(err.value) and "unset it" in str(err.value)
    assert "iter" not in capsys.readouterr().out and not run_env.exists()


@pytest.mark.parametrize("value, message", [("abc", "is not an integer"), ("-1", "seed must be an integer in")])
def test_bad_seed_is_a_clear_error_before_any_work(run_env, monkeypatch, value, message):
    monkeypatch.setenv("TRAIN_MPS_SEED", value)
    with pytest.raises(ValueError, match=message) as err:
        train_mps.train()
    assert "TRAIN_MPS_SEED=" in str(err.value) and value in str(err.value)
    assert not run_env.exists()


def test_one_iteration_is_a_run(run_env, monkeypatch):
    monkeypatch.setenv("TRAIN_MPS_MAX_ITERS", "1")
    best, _ = train_mps.train()
    assert math.isfinite(best) and assert_matched(run_env)["iters"] == 1


# --- 3. the output folder is checked before training -----------------------------------------------------


def test_a_file_in_place_of_the_out_folder_fails_at_once(run_env, capsys):
    run_env.write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="TRAIN_MPS_OUT_DIR"):
        train_mps.train()
    assert "iter" not in capsys.readouterr().out
    with pytest.raises(NotADirectoryError, match="TRAIN_MPS_OUT_DIR"):  # a file above it, too
        train_mps.check_out_dir(run_env / "sub")


def test_a_folder_named_like_an_output_fails_at_once(run_env):
    (run_env / "ckpt.pt").mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match="TRAIN_MPS_OUT_DIR"):
        train_mps.train()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_folder_fails_at_once(run_env, capsys):
    run_env.mkdir()
    run_env.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="TRAIN_MPS_OUT_DIR"):
            train_mps.train()
    finally:
        run_env.chmod(0o755)
    assert "iter" not in capsys.readouterr().out


def test_an_unwritable_out_folder_fails_at_once(run_env, monkeypatch, capsys):
    """The same, where a read-only folder cannot be made (as root): the probe file cannot be created."""

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(train_mps.tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError, match="Permission denied.*TRAIN_MPS_OUT_DIR"):
        train_mps.train()
    assert "iter" not in capsys.readouterr().out and not run_env.exists()


def test_the_probe_leaves_nothing(tmp_path):
    train_mps.check_out_dir(tmp_path / "a" / "b")  # not there yet: its nearest existing parent is probed
    assert list(tmp_path.iterdir()) == []
    train_mps.check_out_dir(tmp_path)
    assert list(tmp_path.iterdir()) == []


# --- 4. metrics.json and ckpt.pt are replaced together or not at all ------------------------------------


def failing_on_second_write(monkeypatch):
    """torch.save (the pair's second file) fails, as a full disk would."""

    def refuse(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train_mps.torch, "save", refuse)


def failing_swap(monkeypatch):
    """The pointer's rename fails (the last step before the new pair is visible)."""
    real = os.replace

    def refuse(src, dst):
        if os.path.basename(dst) == train_mps.LATEST:
            raise KeyboardInterrupt  # as an interrupt would: BaseException, not only Exception
        return real(src, dst)

    monkeypatch.setattr(train_mps.os, "replace", refuse)


@pytest.mark.parametrize("fail", [failing_on_second_write, failing_swap])
def test_a_failed_write_keeps_the_old_pair_matched(run_env, monkeypatch, fail):
    train_mps.train()
    before = snapshot(run_env)
    old = assert_matched(run_env)
    fail(monkeypatch)
    with pytest.raises((OSError, KeyboardInterrupt)):
        train_mps.train(train_mps.Recipe(seed=5))
    assert snapshot(run_env) == before  # the old pair, byte for byte, and no temp file or folder
    assert assert_matched(run_env) == old


def test_the_new_pair_replaces_the_old_one_and_its_folder(run_env):
    train_mps.train()
    train_mps.train(train_mps.Recipe(seed=5))
    assert assert_matched(run_env)["seed"] == 5
    runs = [p.name for p in run_env.iterdir() if p.name.startswith("run-")]
    assert runs == [os.readlink(run_env / "latest")]  # the old run folder is gone
    assert sorted(p.name for p in run_env.iterdir()) == sorted(["ckpt.pt", "latest", "metrics.json", *runs])


def test_a_pair_written_by_an_older_version_is_adopted_without_a_mismatch(run_env, monkeypatch):
    """Plain files (the previous train_mps.py's two renames) become the fixed links, the old bytes visible at
    every step; a failure at the swap leaves them, matched."""
    run_env.mkdir()
    old_metrics = {"seed": 1, "note": "written by an older train_mps.py"}
    (run_env / "metrics.json").write_text(json.dumps(old_metrics))
    torch.save({"metrics": old_metrics}, run_env / "ckpt.pt")
    old_bytes = {name: (run_env / name).read_bytes() for name in ("metrics.json", "ckpt.pt")}
    with pytest.MonkeyPatch.context() as patch:
        failing_swap(patch)
        with pytest.raises(KeyboardInterrupt):
            train_mps.train()
    assert {name: (run_env / name).read_bytes() for name in old_bytes} == old_bytes
    assert assert_matched(run_env) == old_metrics
    train_mps.train()
    assert assert_matched(run_env)["seed"] == 0
    assert len([p for p in run_env.iterdir() if p.name.startswith("run-")]) == 1


# --- 5. prepared data is used only as a complete set ---------------------------------------------------


def prepared(folder, seed=0):
    """A set as scripts/prepare_shakespeare.py writes it: the .bin files and a meta.json recording them."""
    write_bins(folder, seed=seed)
    meta = {}
    for split in ("train", "val"):
        data = (folder / f"{split}.bin").read_bytes()
        meta.update({f"{split}_tokens": len(data) // 2, f"{split}_bin_sha256": hashlib.sha256(data).hexdigest()})
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def test_a_mixed_set_is_refused_before_training(run_env, synthetic_data, tmp_path, capsys):
    prepared(synthetic_data)
    newer = prepared(tmp_path / "newer", seed=1)
    # an interrupted prepare: the new meta.json and train.bin, the old val.bin (same size, other tokens)
    for name in ("meta.json", "train.bin"):
        (synthetic_data / name).write_bytes((newer / name).read_bytes())
    with pytest.raises(train_mps.DataError, match="val.bin is not the file meta.json records") as err:
        train_mps.train()
    assert "make data" in str(err.value) and "--force" in str(err.value)
    assert "iter" not in capsys.readouterr().out and not run_env.exists()


def test_a_complete_set_and_a_set_without_meta_train(run_env, synthetic_data):
    prepared(synthetic_data)
    assert math.isfinite(train_mps.train()[0])
    (synthetic_data / "meta.json").unlink()  # as the DreamTeam repository's data: checked file by file only
    assert math.isfinite(train_mps.train()[0])


def test_an_unreadable_meta_is_a_data_error(run_env, synthetic_data):
    (synthetic_data / "meta.json").write_text("{not json")
    with pytest.raises(train_mps.DataError, match="meta.json is unreadable.*--force"):
        train_mps.train()


def _load_prepare():
    spec = importlib.util.spec_from_file_location("prepare_shakespeare", REPO / "scripts" / "prepare_shakespeare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_prepare_interrupted_between_moves_leaves_a_set_train_mps_refuses(synthetic_data, tmp_path, monkeypatch):
    """write_outputs moved meta.json first, then train.bin, and failed on val.bin: the set must be refused."""
    prep = _load_prepare()
    prepared(synthetic_data)
    rng = np.random.default_rng(7)
    files, meta = {}, {}
    for split, n in (("train", 4000), ("val", 1000)):
        data = rng.integers(0, 50257, n).astype(np.uint16).tobytes()
        files[f"{split}.bin"] = data
        meta.update({f"{split}_tokens": n, f"{split}_bin_sha256": hashlib.sha256(data).hexdigest()})
    files["meta.json"] = json.dumps(meta).encode()
    real = prep.os.replace

    def fail_on_val(src, dst):
        if os.path.basename(dst) == "val.bin":
            raise OSError("simulated interruption")
        return real(src, dst)

    monkeypatch.setattr(prep.os, "replace", fail_on_val)
    with pytest.raises(OSError, match="simulated"):
        prep.write_outputs(synthetic_data, files)
    assert sorted(p.name for p in synthetic_data.iterdir()) == ["meta.json", "train.bin", "val.bin"]
    with pytest.raises(train_mps.DataError, match="val.bin is not the file meta.json records"):
        train_mps.load_split(synthetic_data, "val", 50304)


# --- 6. configs and recipes reject what the code cannot run ---------------------------------------------


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(steps_per_layer=2.0), "steps_per_layer must be a positive integer"),
        (dict(steps_per_layer=True), "steps_per_layer must be a positive integer"),
        (dict(n_head=0), "n_head must be a positive integer"),
        (dict(n_layer=0), "n_layer must be a positive integer"),
        (dict(n_embd=-32), "n_embd must be a positive integer"),
        (dict(block_size=64.0), "block_size must be a positive integer"),
        (dict(vocab_size=0), "vocab_size must be a positive integer"),
        (dict(dropout=1.0), r"dropout must be a number in \[0, 1\)"),
        (dict(dropout=-0.1), r"dropout must be a number in \[0, 1\)"),
        (dict(kinetic_energy=float("nan")), "kinetic_energy must be a finite number >= 0"),
        (dict(jacobian_frobenius=float("inf")), "jacobian_frobenius must be a finite number >= 0"),
        (dict(kinetic_energy=-1.0), "kinetic_energy must be a finite number >= 0"),
        (dict(shortlist_size=2.0, unseen_mass=0.1), "shortlist_size must be 0"),
        (dict(solver="RK4"), "valid solvers"),
        (dict(splitting="Lie"), "valid splittings"),
    ],
)
def test_config_rejects_what_the_model_cannot_run(bad, message):
    with pytest.raises(ValueError, match=message) as t_err:
        GPTConfig(**bad)
    if "shortlist_size" not in bad and "solver" not in bad:  # the JAX config mirrors the rules and messages
        jax_impl = pytest.importorskip("jax_impl")
        with pytest.raises(ValueError) as j_err:
            jax_impl.GPTConfig(**bad)
        assert str(j_err.value) == str(t_err.value)


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(steps_per_layer=2.0), "steps_per_layer must be a positive integer"),
        (dict(schedule="Cosine"), "schedule must be one of constant, cosine, wsd"),
        (dict(optimizer="sgd"), "optimizer must be one of adamw, muon"),
        (dict(ema_decay=1.0), r"ema_decay must be a number in \[0, 1\)"),
        (dict(ema_decay=1.5), r"ema_decay must be a number in \[0, 1\)"),
        (dict(learning_rate=float("nan")), "learning_rate must be a finite number > 0"),
        (dict(learning_rate=float("inf")), "learning_rate must be a finite number > 0"),
        (dict(learning_rate=0.0), "learning_rate must be a finite number > 0"),
        (dict(muon_lr=-0.02), "muon_lr must be a finite number > 0"),
        (dict(min_lr=-1e-4), "min_lr must be a finite number >= 0"),
        (dict(weight_decay=float("nan")), "weight_decay must be a finite number >= 0"),
        (dict(grad_clip=-1.0), "grad_clip must be a finite number >= 0"),
        (dict(grad_clip=float("inf")), "grad_clip must be a finite number >= 0"),
        (dict(warmup_iters=-1), "warmup_iters must be an integer >= 0"),
        (dict(warmup_iters=10.0), "warmup_iters must be an integer >= 0"),
        (dict(decay_frac=1.5), r"decay_frac must be a number in \[0, 1\]"),
        (dict(beta1=1.0), r"beta1 must be a number in \[0, 1\)"),
        (dict(beta2=-0.1), r"beta2 must be a number in \[0, 1\)"),
        (dict(dropout=1.0), r"dropout must be a number in \[0, 1\)"),
        (dict(kinetic_energy=-0.1), "kinetic_energy must be a finite number >= 0"),
        (dict(vocab_size=0), "vocab_size must be a positive integer"),
        (dict(seed="0"), r"seed must be an integer in \[0, 2\*\*63\)"),
        (dict(seed=1.0), r"seed must be an integer in \[0, 2\*\*63\)"),
        (dict(min_lr=1e-2), "min_lr .* must be <= learning_rate"),
        (dict(solver="tsit5"), "valid solvers"),
    ],
)
def test_recipe_rejects_what_train_cannot_run(bad, message):
    lever = not set(bad) <= set(train_mps.Recipe.__dataclass_fields__)  # optimizer, muon_lr: levers.py's fields
    with pytest.raises(ValueError, match=message):
        (levers.LeverRecipe if lever else train_mps.Recipe)(**bad)


def test_recipe_accepts_edge_values():
    train_mps.Recipe(ema_decay=0.0, grad_clip=0.0, warmup_iters=0, decay_frac=0.0, beta1=0.0, weight_decay=0)
    train_mps.Recipe(decay_frac=1.0, min_lr=1e-2, schedule="constant")  # constant never reads min_lr
    train_mps.Recipe(min_lr=3e-3, learning_rate=3e-3)


# --- 7. jax_impl.train fails the same way -----------------------------------------------------------------


def test_jax_train_rejects_bad_iteration_counts(run_env):
    jax_train = pytest.importorskip("jax_impl.train")
    for bad in (0, -5, 1.5):
        with pytest.raises(ValueError, match="max_iters must be an integer >= 1"):
            jax_train.train(max_iters=bad)
    for text in ("0", "-5", "abc", "1.5"):
        with pytest.raises(SystemExit):
            jax_train.main(["--max-iters", text])
    assert not run_env.exists()


def test_jax_train_stops_on_a_non_finite_loss_and_writes_nothing(run_env, monkeypatch):
    jax_train = pytest.importorskip("jax_impl.train")
    real = jax_train.make_train_step

    def nan_loss_step(config, tx):
        step = real(config, tx)

        def wrapped(*args):
            params, opt_state, loss = step(*args)
            return params, opt_state, loss * float("nan")

        return wrapped

    monkeypatch.setattr(jax_train, "make_train_step", nan_loss_step)
    with pytest.raises(train_mps.DivergedError, match="train loss is nan at iteration 1"):
        jax_train.train(max_iters=2)
    assert not run_env.exists()
