"""Issue #14: trained weights that are a flow. Recipe.random_steps (a step count drawn per training step), the
refinement test that tells a flow from a discrete map, and scripts/flow_study.py end to end."""

import json
import random
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT)]

import flow_study  # noqa: E402

import train_mps as tm  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

SHORT = "30"


# ---------------------------------------------------------------------------------------------
# the switch


@pytest.mark.parametrize(
    "fields",
    [
        dict(random_steps=-1),
        dict(random_steps=2.0),
        dict(random_steps=True),
        dict(steps_per_layer=3, random_steps=2),
        dict(eval_steps=-1),
        dict(eval_steps=2.0),
    ],
)
def test_bad_random_steps_are_refused_at_construction(fields):
    with pytest.raises(ValueError, match=next(iter(fields))):
        tm.Recipe(**fields)


def test_draws_cover_steps_per_layer_to_random_steps_and_nothing_else():
    r = tm.Recipe(steps_per_layer=2, random_steps=5)
    rng = random.Random(0)
    draws = [r.draw_steps(rng) for _ in range(400)]
    assert set(draws) == {2, 3, 4, 5}
    assert tm.Recipe(steps_per_layer=3, random_steps=0).draw_steps(rng) == 3  # off: the recipe's own count


def test_the_baseline_pins_the_switch_off():
    from odegpt_eval.specs import BASELINE_RECIPE

    assert BASELINE_RECIPE["random_steps"] == 0


def read_ckpt(out):
    return torch.load(out / "ckpt.pt", map_location="cpu", weights_only=False)


def test_a_range_of_one_step_count_is_the_plain_recipe(run_env):
    """random_steps == steps_per_layer draws the recipe's own count every time: the same weights, bit for bit,
    so the draws' own stream never perturbs the batches or the initialisation."""
    plain = tm.Recipe(solver="heun", splitting="parallel", steps_per_layer=2, random_steps=0)
    tm.train(plain)
    a = read_ckpt(run_env)
    tm.train(replace(plain, random_steps=2))
    b = read_ckpt(run_env)
    assert a["metrics"]["best_vloss"] == b["metrics"]["best_vloss"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_training_draws_the_steps_and_keeps_its_own_for_evaluation(run_env, monkeypatch):
    seen = []
    original = GPT.set_integrator

    def recording(self, solver=None, steps_per_layer=None, splitting=None):
        seen.append(steps_per_layer)
        return original(self, solver, steps_per_layer, splitting)

    monkeypatch.setattr(GPT, "set_integrator", recording)
    tm.train(tm.Recipe(solver="heun", splitting="parallel", steps_per_layer=1, random_steps=3))
    assert seen[0] == 1  # make_model: the evaluation's count
    drawn = seen[1::2]  # each training step: the draw, then back to steps_per_layer
    assert len(drawn) == int(SHORT) and set(drawn) == {1, 2, 3}
    assert set(seen[2::2]) == {1}
    ckpt = read_ckpt(run_env)
    assert ckpt["model_args"]["steps_per_layer"] == 1 and ckpt["metrics"]["recipe"]["random_steps"] == 3


@pytest.mark.parametrize("ema_decay", [0.9, 0.0])  # 0.9: an EMA that moves within 30 steps
def test_eval_steps_change_the_evaluation_and_not_the_training(run_env, synthetic_data, ema_decay):
    """eval_steps: the same weights bit for bit (the draws and the batches untouched), evaluated, recorded and
    exported with the other step count, with or without the EMA."""
    import _study_common

    plain = tm.Recipe(steps_per_layer=1, random_steps=2, ema_decay=ema_decay, warmup_iters=0, learning_rate=1e-2)
    tm.train(plain)
    a = read_ckpt(run_env)
    tm.train(replace(plain, eval_steps=2))
    b = read_ckpt(run_env)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert (a["model_args"]["steps_per_layer"], b["model_args"]["steps_per_layer"]) == (1, 2)
    val = torch.from_numpy(tm.load_split(synthetic_data, "val", plain.vocab_size).astype(np.int64))
    for ckpt, path in ((a, "a.pt"), (b, "b.pt")):
        torch.save(ckpt, run_env / path)
        model, _ = _study_common.load_checkpoint(run_env / path)
        assert tm.full_split_loss(model, val) == pytest.approx(ckpt["metrics"]["val_loss_full"], abs=1e-6)
    assert abs(a["metrics"]["val_loss_full"] - b["metrics"]["val_loss_full"]) > 1e-6  # another integrator's loss


# ---------------------------------------------------------------------------------------------
# a flow keeps its loss when the integrator is refined; a discrete map does not

V, T, B = 64, 32, 16
FLOW_BOUND = 0.02  # nats: the flow-trained model's |loss(rk4/parallel x16) - loss(own)| stays below it
MAP_BOUND = 0.08  # nats: the Euler-trained (h = 1) model's moves by more


def markov_tokens(n=20000, seed=0):
    """A near-deterministic second-order Markov chain over V tokens: enough structure to learn in 600 steps."""
    rng = np.random.default_rng(seed)
    table = rng.dirichlet(np.full(V, 0.02), size=(V, V))
    x = [0, 1]
    for _ in range(n):
        x.append(rng.choice(V, p=table[x[-2], x[-1]]))
    return torch.tensor(x)


def batch(data, gen, b=B):
    ix = torch.randint(len(data) - T - 1, (b,), generator=gen)
    offsets = ix[:, None] + torch.arange(T)[None]
    return data[offsets], data[offsets + 1]


def train_small(data, solver, splitting, random_steps, iters=600, lr=1e-2):
    """train_mps's own step (train_step, draw_steps, lr_at, its optimizers) on a 2-layer, C=16 model."""
    torch.manual_seed(0)
    config = GPTConfig(block_size=T, vocab_size=V, n_layer=2, n_head=2, n_embd=16, bias=False, solver=solver)
    model = GPT(replace(config, splitting=splitting))
    r = tm.Recipe(
        solver=solver, splitting=splitting, random_steps=random_steps, learning_rate=lr, min_lr=lr / 10, warmup_iters=20
    )
    optimizers = tm.make_optimizers(model, r, "cpu")
    params = [p for p in model.parameters() if p.requires_grad]
    base_lrs = [[g["lr"] for g in opt.param_groups] for opt in optimizers]
    gen, rng = torch.Generator().manual_seed(0), random.Random(0)
    for it in range(iters):
        tm.set_lr(optimizers, base_lrs, tm.lr_at(it, iters, r))
        xb, yb = batch(data, gen)
        with tm.drawn_steps(model, r, rng):
            tm.train_step(model, optimizers, params, xb, yb, r)
    return model.eval()


@torch.no_grad()
def refinement_gap(model, data):
    gen = torch.Generator().manual_seed(123)
    batches = [batch(data, gen, 64) for _ in range(4)]
    c = model.config
    own = dict(solver=c.solver, splitting=c.splitting, steps_per_layer=c.steps_per_layer)

    def loss(**integrator):
        model.set_integrator(**integrator)
        return float(np.mean([model(x, y)[1].item() for x, y in batches]))

    gap = loss(solver="rk4", splitting="parallel", steps_per_layer=16) - loss(**own)
    model.set_integrator(**own)
    return gap


def test_a_flow_trained_model_keeps_its_loss_under_a_finer_integrator_and_an_euler_trained_one_does_not():
    torch.set_num_threads(1)
    data = markov_tokens()
    euler = train_small(data, "euler", "lie", random_steps=0)
    flow = train_small(data, "heun", "parallel", random_steps=3)
    euler_gap, flow_gap = refinement_gap(euler, data), refinement_gap(flow, data)
    assert abs(flow_gap) < FLOW_BOUND, flow_gap
    assert abs(euler_gap) > MAP_BOUND, euler_gap


# ---------------------------------------------------------------------------------------------
# scripts/flow_study.py


@pytest.fixture(scope="module")
def study_inputs(tmp_path_factory):
    """A tiny random checkpoint (train_mps's format) and a val.bin of random tokens."""
    root = tmp_path_factory.mktemp("flow_study")
    torch.manual_seed(0)
    config = GPTConfig(
        n_layer=2, n_embd=16, n_head=2, vocab_size=256, block_size=64, solver="heun", splitting="parallel"
    )
    model = GPT(config)
    with torch.no_grad():  # a field well away from the identity, so that integrators differ measurably
        for name, p in model.named_parameters():
            if name.endswith(("c_proj.weight", "c_fc.weight", "c_attn.weight")):
                p.mul_(3.0)
    metrics = {"seed": 7, "elapsed_min": 1.5, "recipe": {"random_steps": 3}}
    torch.save({"model": model.state_dict(), "model_args": asdict(config), "metrics": metrics}, root / "ckpt.pt")
    data = root / "data"
    data.mkdir()
    np.random.default_rng(0).integers(0, 256, 64 * 12 + 1).astype(np.uint16).tofile(data / "val.bin")
    return root, model


def study_args(root, *more):
    return ["--ckpt", str(root / "ckpt.pt"), "--data-dir", str(root / "data"), "--out-dir", str(root / "out"), *more]


def test_flow_study_measures_each_integrator_on_the_whole_split(study_inputs):
    root, model = study_inputs
    results = flow_study.main(study_args(root, "--rtols", "1e-3", "1e-6"))
    (row,) = results["rows"]
    assert results["windows"] == 12 and row["seed"] == 7 and row["elapsed_min"] == 1.5
    # own: the mean cross-entropy over every window, as train_mps.full_split_loss computes it
    val = torch.from_numpy(np.fromfile(root / "data" / "val.bin", dtype=np.uint16).astype(np.int64))
    with torch.no_grad():
        model.eval()
        assert row["own"] == tm.full_split_loss(model, val)  # the same function on the same weights
    assert row["refined_integrator"] == {"solver": "rk4", "splitting": "parallel", "steps_per_layer": 4}
    # two independent integrators of one flow, torch's rk4 x4 and JAX's tsit5 at rtol 1e-6, agree closely,
    # while the model's own heun x1 is measurably off it
    tight = row["tsit5"]["1e-06"]["loss"]
    assert abs(row["refined"] - tight) < 1e-3
    assert abs(row["own"] - tight) > 10 * abs(row["refined"] - tight)
    # a tighter tolerance costs more evaluations
    assert row["tsit5"]["1e-06"]["nfe"] > row["tsit5"]["0.001"]["nfe"]
    assert set(row["tsit5"]) == {"0.001", "0.0001", "1e-06"}  # rtol 1e-4, the judged one, always in
    assert row["flow"] == (abs(row["refined_gap"]) <= 0.02 and abs(row["tsit5_gap"]) <= 0.02)
    saved = json.loads((root / "out" / "flow_study.json").read_text())
    assert saved["rows"][0]["own"] == row["own"]
    assert (root / "out" / "flow_study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_flow_study_resumes_and_redraws(study_inputs, capsys):
    root, _ = study_inputs
    flow_study.main(study_args(root, "--rtols", "1e-3"))
    again = flow_study.main(study_args(root, "--rtols", "1e-3", "--resume"))
    assert len(again["rows"]) == 1 and "in the JSON already" in capsys.readouterr().out
    redrawn = flow_study.main(["--out-dir", str(root / "out"), "--plot-only"])
    assert redrawn["rows"] == again["rows"]


def test_flow_study_names_the_fix_for_a_folder_without_runs(tmp_path):
    with pytest.raises(flow_study.StudyError, match="benchmark.py --out"):
        flow_study.main(["--runs", str(tmp_path), "--out-dir", str(tmp_path / "out")])


def test_make_flow_names_the_flow_recipe_as_one_benchmark_spec():
    """Issue #14's table reproduces its recipe as recorded: FLOW (heun/parallel x2 trained on 2..4 steps, the
    canonical until issue #32) is named explicitly, beside EULER; `make canonical-table` runs today's canonical
    (whose Recipe defaults draw the step count: a flow) beside FLOW, then the flow study."""
    from conftest import makefile_text

    from odegpt_eval.specs import parse_config

    r = tm.Recipe()
    assert r.random_steps > r.steps_per_layer >= 1 and r.splitting == "parallel"
    text = makefile_text()
    spec = {
        name: next(line for line in text.splitlines() if line.startswith(f"{name} :=")).split(":=", 1)[1].strip()
        for name in ("EULER", "FLOW", "FLOW_KE")
    }
    assert parse_config(spec["EULER"], tm.Recipe).overrides == {
        "solver": "euler",
        "splitting": "lie",
        "steps_per_layer": 1,
        "random_steps": 0,
    }
    flow = parse_config(spec["FLOW"], tm.Recipe).overrides
    assert flow == {"steps_per_layer": 2, "random_steps": 4} and replace(r, **flow) != r
    assert spec["FLOW_KE"].startswith(spec["FLOW"] + ",kinetic_energy=")
    rule = " ".join(text.split("\nflow:", 1)[1].split("\n\n", 1)[0].split())  # whitespace runs as one space
    assert f"--configs {spec['FLOW']} {spec['FLOW_KE']} {spec['EULER']} " in rule
    assert f"--baseline {spec['EULER']} " in rule and "scripts/flow_study.py --runs" in rule
    rule = " ".join(text.split("\ncanonical-table:", 1)[1].split("\n\n", 1)[0].split())
    assert f"--configs canonical {spec['FLOW']} --baseline {spec['FLOW']} " in rule and "scripts/flow_study.py" in rule


def test_run_folders_are_labelled_by_their_recipe_changes():
    label = "canonical_solver=heun_splitting=parallel_steps_per_layer=2_random_steps=4_kinetic_energy=0.01-5384a2"
    assert flow_study.short_label(label) == (
        "solver=heun, splitting=parallel, steps_per_layer=2, random_steps=4, kinetic_energy=0.01"
    )
    assert flow_study.short_label("canonical") == "canonical" and flow_study.short_label("out/ckpt.pt") == "out/ckpt.pt"


def test_rows_are_named_by_the_recipe_their_checkpoint_recorded():
    recipe = {**asdict(tm.Recipe()), "seed": 5, "solver": "euler", "random_steps": 0}
    assert flow_study.row_label({"label": "x-abcdef", "recipe": recipe}) == "solver=euler, random_steps=0"
    assert flow_study.row_label({"label": "x", "recipe": asdict(tm.Recipe())}) == "canonical"
    assert flow_study.row_label({"label": "out/ckpt.pt", "recipe": None}) == "out/ckpt.pt"
