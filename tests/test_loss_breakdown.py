"""scripts/loss_breakdown.py on a tiny shortlist checkpoint: the total is train_mps's whole-split loss,
the buckets partition it, and the in-context flags match a direct loop."""

import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT)]

import loss_breakdown  # noqa: E402
from _study_common import StudyError  # noqa: E402

import train_mps  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from parity_tests import tolerances as T  # noqa: E402

VOCAB, BLOCK = 128, 64


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("breakdown")
    rng = np.random.default_rng(0)
    train = rng.integers(0, 100, 3000).astype(np.uint16)  # ids >= 100 never occur in train
    val = rng.integers(0, VOCAB, 64 * 6 + 1).astype(np.uint16)
    data = root / "data"
    data.mkdir()
    train.tofile(data / "train.bin")
    val.tofile(data / "val.bin")
    ids, mass = train_mps.train_vocabulary(train, VOCAB)
    torch.manual_seed(0)
    config = GPTConfig(n_layer=2, n_embd=16, n_head=2, vocab_size=VOCAB, block_size=BLOCK, bias=False,
                       shortlist_size=len(ids), unseen_mass=mass)  # fmt: skip
    model = GPT(config).set_shortlist(torch.from_numpy(ids))
    ckpt = {"model": model.state_dict(), "model_args": asdict(config), "iter_num": 0, "metrics": {"iters": 0}}
    torch.save(ckpt, root / "ckpt.pt")
    return root, model, train, val


def run(inputs, *extra):
    root, *_ = inputs
    argv = ["--ckpt", str(root / "ckpt.pt"), "--data-dir", str(root / "data"), "--out-dir", str(root / "out")]
    return loss_breakdown.main(argv + ["--chunk", "4", *extra])


def test_total_is_the_whole_split_loss_and_buckets_partition_it(inputs):
    _, model, train, val = inputs
    res = run(inputs)
    expected = train_mps.full_split_loss(model.eval(), torch.from_numpy(val.astype(np.int64)))
    bound = 2 * T.model_loss(model, (len(val) - 1) // 64 * 64, expected)  # float32, other batches (tolerances.py)
    assert res["total"] == pytest.approx(expected, abs=bound)
    assert sum(b["all"]["fraction"] for b in res["buckets"]) == pytest.approx(1.0)
    assert sum(b["all"]["contribution"] for b in res["buckets"]) == pytest.approx(res["total"], rel=1e-9)
    for b in res["buckets"]:
        parts = b["in_context"]["contribution"] + b["not_in_context"]["contribution"]
        assert parts == pytest.approx(b["all"]["contribution"], rel=1e-9, abs=1e-12)
    unseen = res["buckets"][0]
    assert unseen["name"] == "0" and unseen["all"]["fraction"] == pytest.approx(np.mean(val[1:385] >= 100))
    assert res["calibration"]["temperature"]["1.0"] == pytest.approx(res["total"], abs=bound)
    assert res["best_calibration_gain"] >= 0


def test_kneser_ney_buckets_partition_the_n_grams_whole_split_loss(inputs):
    """--kneser-ney N: the n-gram's per-bucket contributions sum to kneser_ney.whole_split_loss on the same val."""
    from odegpt_eval import kneser_ney

    root, _, train, val = inputs
    res = run(inputs, "--kneser-ney", "3")
    want = kneser_ney.whole_split_loss(kneser_ney.fit(train, 3, VOCAB), val, BLOCK)
    assert res["kneser_ney"] == {"order": 3, "total": pytest.approx(want, rel=1e-9)}
    assert sum(b["kneser_ney"]["contribution"] for b in res["buckets"]) == pytest.approx(want, rel=1e-9)
    unseen, seen_11_100 = res["buckets"][0]["kneser_ney"], res["buckets"][3]["kneser_ney"]
    assert unseen["mean_loss"] > seen_11_100["mean_loss"]  # never-seen ids are the hardest
    saved = json.loads((root / "out" / "loss_breakdown.json").read_text())
    assert saved["kneser_ney"]["order"] == 3 and "kneser_ney" in saved["buckets"][0]
    with pytest.raises(SystemExit):
        run(inputs, "--kneser-ney", "1")


def test_in_context_fraction_matches_a_direct_loop(inputs):
    _, _, _, val = inputs
    res = run(inputs)
    hits = 0
    for w in range(6):
        x, y = val[w * 64 : w * 64 + 64], val[w * 64 + 1 : w * 64 + 65]
        hits += sum(int(y[t] in set(x[: t + 1].tolist())) for t in range(64))
    assert res["in_context_fraction"] == pytest.approx(hits / (6 * 64))


def test_outputs_and_plot_only(inputs):
    root, *_ = inputs
    run(inputs)
    saved = json.loads((root / "out" / "loss_breakdown.json").read_text())
    assert {"total", "buckets", "calibration", "run"} <= set(saved)
    png = root / "out" / "loss_breakdown.png"
    png.unlink()
    run(inputs, "--plot-only")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_train_split_names_the_fix(inputs, tmp_path):
    root, _, _, val = inputs
    (tmp_path / "data").mkdir()
    val.tofile(tmp_path / "data" / "val.bin")
    argv = ["--ckpt", str(root / "ckpt.pt"), "--data-dir", str(tmp_path / "data"), "--out-dir", str(tmp_path)]
    with pytest.raises(StudyError, match="make data"):
        loss_breakdown.main(argv)
