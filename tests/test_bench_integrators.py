"""scripts/bench_integrators.py: interleaved step times, ratios to the first configuration, JSON + PNG."""

import json
import sys

import pytest
from conftest import REPO

import train_mps
from parity_tests import tolerances as T

sys.path.insert(0, str(REPO / "scripts"))
import bench_integrators  # noqa: E402


def test_interleaved_step_times_and_ratios(tmp_path):
    out = tmp_path / "bench.json"
    argv = ["--configs", "euler/lie/1", "heun/parallel/2", "--repeats", "2", "--steps", "1", "--warmup", "0"]
    result = bench_integrators.main(argv + ["--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["configs"] == result["configs"] and out.with_suffix(".png").stat().st_size > 0
    ref, heun = saved["configs"]
    assert ref["ratios"] == [1.0, 1.0] and len(heun["ms"]) == 2
    # heun is 2 stages of F = A + M, 2 steps per layer, 4 layers: 16 evaluations of A and of M
    assert ref["nfe"] == 8 and heun["nfe"] == 32
    assert heun["ratios"] == [h / e for h, e in zip(heun["ms"], ref["ms"])]
    assert heun["recipe"]["solver"] == "heun" and heun["recipe"]["steps_per_layer"] == 2


def test_baseline_is_the_benchmarks_starting_point(tmp_path):
    from odegpt_eval.specs import BASELINE_RECIPE

    assert bench_integrators.parse_config("baseline") == BASELINE_RECIPE
    assert bench_integrators.parse_config("rk4/strang/2") == dict(
        solver="rk4", splitting="strang", steps_per_layer=2, random_steps=0
    )
    out = tmp_path / "bench.json"
    argv = ["--configs", "baseline", "euler/lie/1", "--repeats", "1", "--steps", "1", "--warmup", "0"]
    result = bench_integrators.main(argv + ["--out", str(out)])
    base, canon = result["configs"]
    assert base["recipe"]["shortlist"] is False and base["recipe"]["schedule"] == "constant"
    assert canon["recipe"]["shortlist"] is True and base["ratios"] == [1.0]
    assert base["shortlist_size"] == 0 and canon["shortlist_size"] > 0


@pytest.mark.parametrize("bad", ["heun-parallel-1", "heun/parallel/x", "heun/parallel"])
def test_bad_config_names_the_format(bad):
    with pytest.raises(SystemExit, match="SOLVER/SPLITTING/STEPS"):
        bench_integrators.parse_config(bad)


def test_plot_only_without_json_says_what_to_run(tmp_path):
    with pytest.raises(SystemExit, match="run scripts/bench_integrators.py first"):
        bench_integrators.main(["--plot-only", "--out", str(tmp_path / "none.json")])


def test_recipe_switches_parse_as_the_benchmark_parses_them(tmp_path):
    assert bench_integrators.parse_config("canonical") == {}
    assert bench_integrators.parse_config("canonical:optimizer=muon,ema_decay=0.999") == dict(
        optimizer="muon", ema_decay=0.999
    )
    with pytest.raises(SystemExit, match="unknown Recipe field 'nope'"):
        bench_integrators.parse_config("canonical:nope=1")
    out = tmp_path / "bench.json"
    argv = ["--configs", "canonical", "canonical:ema_decay=0.5,optimizer=muon", "--repeats", "1", "--steps", "2"]
    canon, switched = bench_integrators.main(argv + ["--warmup", "0", "--out", str(out)])["configs"]
    assert canon["recipe"]["ema_decay"] == train_mps.Recipe().ema_decay and canon["recipe"]["optimizer"] == "adamw"
    assert switched["recipe"]["ema_decay"] == 0.5 and switched["recipe"]["optimizer"] == "muon"


def test_step_variants_compute_the_same_loss_another_way():
    """@loss_only and @ce_on_logits give the default forward's loss (the variants time the same number)."""
    import numpy as np
    import torch

    tokens = np.random.default_rng(0).integers(0, 300, 3000).astype(np.uint16)
    torch.manual_seed(0)
    model = train_mps.make_model(train_mps.Recipe(), tokens)
    data = torch.from_numpy(tokens.astype(np.int64))
    xb, yb = train_mps.get_batch(data, torch.Generator().manual_seed(0))
    _, loss = model(xb, yb)
    # float32, derived (parity_tests/tolerances.py): @ce_on_logits takes a log-sum-exp over all vocab_size entries of
    # log-probabilities that a log-softmax over the shortlist's k rounded; the default forward reads them off
    k, n = model.config.shortlist_size, yb.numel()
    bound = T.nll(model.config.vocab_size, n, loss.item()) + 3 * T.nll(k, n, loss.item())
    for variant in bench_integrators.STEP_VARIANTS:
        logits, other = bench_integrators.VariantForward(model, variant)(xb, yb)
        assert abs(other.item() - loss.item()) <= bound
        assert (logits is None) == (variant == "loss_only")
    assert bench_integrators.split_variant("canonical:ema_decay=0.5@loss_only") == (
        "canonical:ema_decay=0.5",
        "loss_only",
    )
    with pytest.raises(SystemExit, match="unknown step variant"):
        bench_integrators.split_variant("canonical@fast")
    baseline = train_mps.make_model(train_mps.Recipe(shortlist=False), tokens)
    with pytest.raises(SystemExit, match="needs a shortlist"):
        bench_integrators.VariantForward(baseline, "loss_only")


def test_drawn_step_counts_are_timed_as_train_draws_them(tmp_path, monkeypatch):
    """Recipe.random_steps: each timed step runs under a drawn count (then back), and the NFE is the draws' mean."""
    from model import GPT

    seen = []
    original = GPT.set_integrator
    monkeypatch.setattr(GPT, "set_integrator", lambda self, **kw: seen.append(kw) or original(self, **kw))
    out = tmp_path / "bench.json"
    argv = ["--configs", "canonical:solver=heun,splitting=parallel,steps_per_layer=2,random_steps=4"]
    (flow,) = bench_integrators.main(argv + ["--repeats", "2", "--steps", "6", "--warmup", "0", "--out", str(out)])[
        "configs"
    ]
    assert seen[0] == {"steps_per_layer": 2}  # make_model: the evaluation's count
    drawn = [kw["steps_per_layer"] for kw in seen[1::2]]
    assert len(drawn) == 12 and set(drawn) <= {2, 3, 4} and len(set(drawn)) > 1
    assert all(kw == {"steps_per_layer": 2} for kw in seen[2::2])
    # heun/parallel: 2 stages of A and of M per step, 4 layers; the mean of 2..4 steps is 3
    assert flow["nfe"] == 2 * 2 * 4 * 3
