"""Harness fidelity: the two files inside the public DreamTeam harness, replayed (tests/dreamteam_harness.py
reimplements both of its versions), in its folder layout with the data at the repository root, the
working directory as the harness has it, tiny random data and runs shortened by TRAIN_MPS_MAX_ITERS."""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, write_bins
from dreamteam_harness import CURRENT_MAIN, FENCE, FILES, OLDER_MAIN, harness_accepts, harness_block, seeds_reply

from parity_tests import tolerances as T


def our_sources() -> dict:
    return {name: (REPO / name).read_text() for name in FILES}


@pytest.mark.parametrize("name", FILES)
def test_each_file_passes_the_harness_filter_verbatim(name):
    code = (REPO / name).read_text()
    assert code.split("\n")[0].startswith("import"), "the harness accepts a block only if its first line is an import"
    assert FENCE not in code, "a triple backtick inside the file ends the harness's block early"
    compile(code, name, "exec")


def test_a_reply_holding_our_two_files_has_both_blocks_accepted():
    sources = our_sources()
    reply = seeds_reply(sources)
    for name, code in sources.items():
        block = harness_block(reply, name)
        assert harness_accepts(block), f"{name}: the harness would fall back to its original"
        assert block == code.strip()


def test_the_parser_rejects_what_the_harness_rejects():
    """The replayed parser can fail: a docstring first, a `from` import first, a fence inside."""
    assert not harness_accepts('"""doc"""\nimport os\n')
    assert not harness_accepts("from os import path\n")
    assert not harness_accepts("import os\ndef f(:\n")
    cut = harness_block(seeds_reply({"model.py": f"import os\nS = '{FENCE}'\nX = 1\n"}), "model.py")
    assert cut == "import os\nS = '"  # the regex stops at the fence inside the string


# -- the DreamTeam folder layout ---------------------------------------------------------------------------


def dreamteam_repo(root: Path, base_files: dict | None = None) -> Path:
    """root/data/shakespeare/{train,val}.bin and root/src/dreamteam/{train_mps,model}.py (the base)."""
    write_bins(root / "data" / "shakespeare", n_train=3000, n_val=700, vocab=400)
    src = root / "src" / "dreamteam"
    src.mkdir(parents=True)
    for name, code in (base_files or our_sources()).items():
        (src / name).write_text(code)
    return root


def harness_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAIN_MPS_")}
    env.update({"TRAIN_MPS_MAX_ITERS": "3", "OMP_NUM_THREADS": "1", "PYTHONPATH": "", **extra})
    return env


def run_harness(script: str, cwd: Path, args: list, timeout: int = 600) -> tuple[dict, str]:
    path = cwd / "replay_main.py"
    path.write_text(script)
    proc = subprocess.run(
        [sys.executable, str(path), *map(str, args)],
        cwd=cwd,
        env=harness_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    line = next(s for s in proc.stdout.splitlines() if s.startswith("RESULTS "))
    return json.loads(line[len("RESULTS ") :]), out


def assert_finite_scores(results: dict, out: str):
    """Every candidate's scores are finite (the harness records inf on any exception); the current
    harness takes train()'s values as they are, so they must be floats."""
    for name, record in results.items():
        assert all(math.isfinite(v) for v in record["scores"]), f"{name} scored {record['scores']}:\n{out[-3000:]}"
        assert record.get("types", ["float", "float"]) == ["float", "float"], f"{name} returned {record['types']}"


def marked(model_code: str, marker: str) -> str:
    """model.py that prints `marker` when a GPT is built: shows which model.py a run used."""
    anchor = "        self.config = config\n        # embedding rows"
    assert anchor in model_code, "GPT.__init__ changed: update the marker's anchor"
    return model_code.replace(anchor, f"        print({marker!r}, flush=True)\n" + anchor)


def test_current_harness_scores_our_files_and_uses_each_candidates_model(tmp_path):
    """cwd src/dreamteam, data at the repository root, the base `model` imported first: each candidate
    still trains (finite float scores) with the model.py written beside its own train_mps.py."""
    root = dreamteam_repo(tmp_path)
    src = root / "src" / "dreamteam"
    sources = our_sources()
    replies = []
    for name in ("first", "second"):
        files = {"train_mps.py": "", "model.py": marked(sources["model.py"], f"MODEL-OF-{name}")}
        (tmp_path / f"{name}.txt").write_text(seeds_reply(files))
        replies.append(tmp_path / f"{name}.txt")
    results, out = run_harness(CURRENT_MAIN, src, replies)
    assert set(results) == {"first", "second"}
    assert_finite_scores(results, out)
    assert out.count("MODEL-OF-first") == 1 and out.count("MODEL-OF-second") == 1, out[-3000:]
    for name in ("first", "second"):  # the checkpoint lands beside the candidate, not in the harness's folder
        assert (src / "dreamteam_generations" / "gen_1" / name / "out" / "metrics.json").exists()


def test_older_harness_from_the_repository_root(tmp_path):
    """cwd at the root, candidate folders under results/: both candidates train, and the second one's
    model.py is used although the first one's `model` was imported in the same process."""
    root = dreamteam_repo(tmp_path)
    sources = our_sources()
    cands = []
    for i, name in enumerate(("a", "b")):
        cand = root / "results" / "gen_0" / f"{i:02d}_{name}"
        cand.mkdir(parents=True)
        (cand / "train_mps.py").write_text(sources["train_mps.py"])
        (cand / "model.py").write_text(marked(sources["model.py"], f"MODEL-OF-{name}"))
        cands.append(cand.relative_to(root))
    results, out = run_harness(OLDER_MAIN, root, cands)
    assert len(results) == 2
    assert_finite_scores(results, out)
    assert out.count("MODEL-OF-a") == 1 and out.count("MODEL-OF-b") == 1, out[-3000:]


# -- logit-using edits, as an LLM writes them ----------------------------------------------------------------

TRAIN_STEP = "        _, loss = model(xb, yb)\n        total_loss = loss + model.regularization_loss()\n"
MODEL_HEAD = "        return self.full_logits(ls), self.shortlist_loss(ls, targets)\n"
EDITS = {
    # z-loss on the log-partition function (PaLM), in the training step
    "z_loss": (
        "train_mps.py",
        TRAIN_STEP,
        "        logits, loss = model(xb, yb)\n"
        "        z_loss = 1e-4 * torch.logsumexp(logits, dim=-1).pow(2).mean()\n"
        "        total_loss = loss + z_loss + model.regularization_loss()\n",
    ),
    # the loss recomputed from the logits, nanoGPT style, with label smoothing
    "label_smoothing_in_train": (
        "train_mps.py",
        TRAIN_STEP,
        "        logits, loss = model(xb, yb)\n"
        "        loss = torch.nn.functional.cross_entropy(\n"
        "            logits.view(-1, logits.size(-1)), yb.view(-1), label_smoothing=0.1\n"
        "        )\n"
        "        total_loss = loss + model.regularization_loss()\n",
    ),
    # an entropy bonus
    "entropy_bonus": (
        "train_mps.py",
        TRAIN_STEP,
        "        logits, loss = model(xb, yb)\n"
        "        probs = torch.softmax(logits, dim=-1)\n"
        "        entropy = -(probs * torch.log_softmax(logits, dim=-1)).sum(-1).mean()\n"
        "        total_loss = loss - 0.01 * entropy + model.regularization_loss()\n",
    ),
    # label smoothing inside model.py's output layer
    "label_smoothing_in_model": (
        "model.py",
        MODEL_HEAD,
        "        logits = self.full_logits(ls)\n"
        "        loss = F.cross_entropy(\n"
        "            logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1, label_smoothing=0.1\n"
        "        )\n"
        "        return logits, loss\n",
    ),
    # distillation towards a uniform-smoothed copy of the model's own (detached) distribution
    "self_distillation": (
        "train_mps.py",
        TRAIN_STEP,
        "        logits, loss = model(xb, yb)\n"
        "        teacher = torch.softmax(logits.detach() / 2.0, dim=-1)\n"
        "        kd = torch.nn.functional.kl_div(\n"
        "            torch.log_softmax(logits / 2.0, dim=-1), teacher, reduction='batchmean'\n"
        "        )\n"
        "        total_loss = loss + 0.1 * kd + model.regularization_loss()\n",
    ),
}


def test_logit_using_edits_train_in_the_harness(tmp_path):
    root = dreamteam_repo(tmp_path)
    src = root / "src" / "dreamteam"
    sources = our_sources()
    replies = []
    for name, (file, old, new) in EDITS.items():
        assert sources[file].count(old) == 1, f"{name}: {file} no longer has the line the edit rewrites"
        files = {n: "" for n in FILES}
        files[file] = sources[file].replace(old, new)
        (tmp_path / f"{name}.txt").write_text(seeds_reply(files))
        replies.append(tmp_path / f"{name}.txt")
    results, out = run_harness(CURRENT_MAIN, src, replies)
    assert set(results) == set(EDITS)
    assert_finite_scores(results, out)


# Edits of model.py an LLM makes as a differential-equations or architecture specialist (issue #34), each written as
# the LLM writes it: (old text, new text) pairs. Through the current driver each one must take effect (the trained
# model's whole-split loss moves away from the unedited files') or fail loudly.
MODEL_EDITS = {
    "gptconfig_solver_rk4": [('    solver: str = "heun"', '    solver: str = "rk4"')],
    "gptconfig_splitting_strang": [('    splitting: str = "parallel"', '    splitting: str = "strang"')],
    "gptconfig_kinetic_energy": [("    kinetic_energy: float = 0.0", "    kinetic_energy: float = 0.01")],
    "nanogpt_block_forward": [
        (
            "    def forward(self, x, stats=None):\n",
            "    def forward(self, x):\n"
            "        x = x + self.attn(self.ln_1(x))\n"
            "        x = x + self.mlp(self.ln_2(x))\n"
            "        return x\n\n"
            "    def integrator_forward(self, x, stats=None):\n",
        )
    ],
    "mlp_relu_squared": [
        (
            "        x = self.c_proj(self.act(self.c_fc(x)))  # (B, T, C)",
            "        x = self.c_proj(torch.relu(self.c_fc(x)) ** 2)  # (B, T, C)",
        )
    ],
}


def test_model_edits_take_effect_through_the_current_driver(tmp_path):
    root = dreamteam_repo(tmp_path)
    src = root / "src" / "dreamteam"
    sources = our_sources()
    replies = []
    for name, pairs in {"unedited": [], **MODEL_EDITS}.items():
        code = sources["model.py"]
        for old, new in pairs:
            assert code.count(old) == 1, f"{name}: model.py no longer has {old!r}"
            code = code.replace(old, new)
        (tmp_path / f"{name}.txt").write_text(seeds_reply({"train_mps.py": "", "model.py": code}))
        replies.append(tmp_path / f"{name}.txt")
    results, out = run_harness(CURRENT_MAIN, src, replies)
    assert_finite_scores(results, out)

    def trained(name):
        out_dir = src / "dreamteam_generations" / "gen_1" / name / "out"
        return torch.load(out_dir / "ckpt.pt", map_location="cpu", weights_only=False)

    base = trained("unedited")["model"]
    for name in MODEL_EDITS:  # numbers moved: the trained weights are not the unedited files' ones
        weights = trained(name)["model"]
        assert any(not torch.equal(weights[k], base[k]) for k in base), f"{name} trained exactly as the unedited files"
    assert trained("gptconfig_solver_rk4")["model_args"]["solver"] == "rk4"
    assert trained("gptconfig_kinetic_energy")["model_args"]["kinetic_energy"] == 0.01
    assert "Block.fused_field no longer equals attn + mlp" in out  # the MLP edit, said once at construction


# -- nanoGPT's API ------------------------------------------------------------------------------------------


def canonical_model(seed: int = 0):
    import numpy as np

    import train_mps

    torch.manual_seed(seed)
    tokens = np.random.default_rng(seed).integers(0, 300, 2000).astype(np.uint16)
    return train_mps.make_model(train_mps.Recipe(), tokens), tokens


def test_forward_returns_nanogpts_logits_and_their_cross_entropy():
    model, tokens = canonical_model()
    assert model.config.shortlist_size  # the canonical's output layer
    idx = torch.from_numpy(tokens[:128].astype("int64")).view(2, 64)
    targets = torch.from_numpy(tokens[1:129].astype("int64")).view(2, 64)
    targets[0, 5] = 301  # never seen in training: outside the shortlist
    logits, loss = model(idx, targets)
    assert logits.shape == (2, 64, model.config.vocab_size)
    ce = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
    # float32 as trained, a derived bound (parity_tests/tolerances.py): the log-sum-exp over all vocab_size entries of
    # log-probabilities that a log-softmax over the shortlist's k rounded, against the loss read off them
    k, n = model.config.shortlist_size, targets.numel()
    assert abs(ce.item() - loss.item()) <= T.nll(model.config.vocab_size, n, loss.item()) + 3 * T.nll(k, n, loss.item())
    # the same formulas in float64, where rounding leaves them equal to ~1e-12: the gradients and the last position
    model.double()
    logits, loss = model(idx, targets)
    ce = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
    assert abs(ce.item() - loss.item()) < 1e-10
    (g_logits,) = torch.autograd.grad(ce, model.lm_head.weight)
    (g_loss,) = torch.autograd.grad(model(idx, targets)[1], model.lm_head.weight)
    assert torch.allclose(g_logits, g_loss, rtol=1e-9, atol=1e-12)
    last, none = model(idx)
    assert none is None and last.shape == (2, 1, model.config.vocab_size)
    assert torch.allclose(last, logits[:, -1:], rtol=0, atol=1e-10)


def test_a_block_called_with_one_argument_is_the_pre_ln_block():
    """Under nanoGPT's integrator (euler/lie x1, GPTConfig's default) a Block is nanoGPT's pre-LN block; the
    canonical's own (heun/parallel x2) is another map of the same weights."""
    model, _ = canonical_model()
    model.set_integrator(solver="euler", steps_per_layer=1, splitting="lie")
    block = model.transformer.h[0]
    x = torch.randn(2, 16, model.config.n_embd)
    y = x + block.attn(block.ln_1(x))
    y = y + block.mlp(block.ln_2(y))
    assert torch.equal(block(x), y)
    model.set_integrator(solver="heun", splitting="parallel")  # the blocks follow the model's integrator
    assert block.config.solver == "heun"
    assert not torch.equal(block(x), y)


def test_estimate_mfu_is_nanogpts_formula():
    """nanoGPT's formula under its integrator (euler/lie x1: one evaluation of each sub-field per layer)."""
    model, _ = canonical_model()
    model.set_integrator(solver="euler", steps_per_layer=1, splitting="lie")
    c = model.config
    n = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    flops_per_token = 6 * n + 12 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * c.block_size
    expected = flops_per_token * c.block_size * 8 / 0.05 / 312e12
    assert model.estimate_mfu(fwdbwd_per_iter=8, dt=0.05) == pytest.approx(expected, rel=1e-12)
    model.set_integrator(solver="rk4", splitting="parallel")  # four evaluations per layer cost more
    assert model.estimate_mfu(fwdbwd_per_iter=8, dt=0.05) > 3 * expected


def test_crop_block_size_configure_optimizers_and_generate():
    model, tokens = canonical_model()
    model.crop_block_size(32)
    assert model.transformer.wpe.weight.shape[0] == 32 and model.config.block_size == 32
    idx = torch.from_numpy(tokens[:64].astype("int64")).view(2, 32)
    assert model(idx, idx)[0].shape == (2, 32, model.config.vocab_size)
    with pytest.raises(ValueError, match="block size"):
        model(torch.zeros(1, 33, dtype=torch.long))

    opt = model.configure_optimizers(weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.95), device_type="cpu")
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))

    model.eval()
    torch.manual_seed(0)
    out = model.generate(idx[:1, :5], max_new_tokens=40, top_k=1)  # greedy: each token the argmax
    assert out.shape == (1, 45) and torch.equal(out[:, :5], idx[:1, :5])
    logits, _ = model(out[:, -33:-1])  # the context generate saw: the last block_size tokens
    assert out[0, -1].item() == logits[0, -1].argmax().item()
    assert set(out[0, 5:].tolist()) <= set(model.row_tokens.tolist())  # greedy never picks an unseen token
    sampled = model.generate(idx[:1, :5], max_new_tokens=200, temperature=1.0)
    assert int(sampled.max()) < model.config.vocab_size and int(sampled.min()) >= 0


# -- train_mps.py: the model beside it, the data where users keep it, the clock ---------------------------


def test_train_mps_loads_the_model_beside_it_even_after_another_model_was_imported(tmp_path):
    folder = tmp_path / "cand"
    folder.mkdir()
    (folder / "train_mps.py").write_text((REPO / "train_mps.py").read_text())
    (folder / "model.py").write_text((REPO / "model.py").read_text().replace("class GPT(", "MARK = 7\n\n\nclass GPT("))
    probe = textwrap.dedent(
        f"""
        import importlib.util, sys, types
        decoy = types.ModuleType("model")
        decoy.__file__ = "/nowhere/model.py"
        sys.modules["model"] = decoy  # another `model`, imported first
        spec = importlib.util.spec_from_file_location("temp_train_mps", {str(folder / "train_mps.py")!r})
        m = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(m)
        print(sys.modules[m.GPT.__module__].MARK, sys.modules["model"] is decoy)
        """
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=harness_env(), timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["7", "True"]  # the candidate's model.py, and the harness's `model` untouched


def test_train_mps_shares_an_already_imported_model_from_the_same_file():
    import model
    import train_mps

    assert train_mps.GPT is model.GPT


@pytest.fixture
def train_mps_module():
    import train_mps

    return train_mps


def test_data_found_in_the_dreamteam_layout_from_the_working_directory(tmp_path, monkeypatch, train_mps_module):
    root = dreamteam_repo(tmp_path)
    monkeypatch.delenv("TRAIN_MPS_DATA_DIR", raising=False)
    monkeypatch.chdir(root / "src" / "dreamteam")
    assert train_mps_module.find_data_dir() == (root / "data" / "shakespeare").resolve()


def test_data_dir_variable_names_the_folder_or_its_parent(tmp_path, monkeypatch, train_mps_module):
    data = write_bins(tmp_path / "d" / "shakespeare", vocab=400)
    monkeypatch.setenv("TRAIN_MPS_DATA_DIR", str(data))
    assert train_mps_module.find_data_dir() == data
    monkeypatch.setenv("TRAIN_MPS_DATA_DIR", str(data.parent))  # the original train_mps.py's data_dir
    assert train_mps_module.find_data_dir() == data


def test_missing_data_error_lists_every_folder_tried(tmp_path, monkeypatch, train_mps_module):
    monkeypatch.delenv("TRAIN_MPS_DATA_DIR", raising=False)
    monkeypatch.setattr(train_mps_module, "__file__", str(tmp_path / "harness" / "cand" / "train_mps.py"))
    monkeypatch.chdir(tmp_path)
    tried = train_mps_module.data_dir_candidates()
    here = tmp_path.resolve() / "harness" / "cand"
    for folder in (here, here.parent, tmp_path.resolve(), Path(tmp_path.resolve().anchor)):  # up to the root
        assert folder / "data" / "shakespeare" in tried
    with pytest.raises(train_mps_module.DataError) as err:
        train_mps_module.find_data_dir()
    for d in tried:
        assert str(d) in str(err.value)
    assert "make data" in str(err.value) and "TRAIN_MPS_DATA_DIR" in str(err.value)


def test_the_clock_starts_on_the_first_line_of_train():
    tree = ast.parse((REPO / "train_mps.py").read_text())
    train = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "train")
    body = [s for s in train.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    first = body[0]
    assert isinstance(first, ast.Assign) and ast.unparse(first.value) == "time.time()", ast.unparse(first)
    clock = first.targets[0].id
    elapsed = [n for n in ast.walk(train) if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "elapsed_min"]
    assert len(elapsed) == 1 and clock in ast.unparse(elapsed[0].value)


# -- Python 3.9 -------------------------------------------------------------------------------------------------

VERMIN = ["--target=3.9-", "--no-tips", "--violations", "--eval-annotations", "--feature", "union-types"]


def vermin(*paths) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("vermin")
    if not exe.exists():
        pytest.fail("vermin is missing: `make setup` installs it (the dev extra)")
    return subprocess.run([str(exe), *VERMIN, *map(str, paths)], capture_output=True, text=True, timeout=120)


def test_both_files_run_on_python_39():
    proc = vermin(REPO / "model.py", REPO / "train_mps.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_python_39_check_can_fail(tmp_path):
    newer = tmp_path / "newer.py"
    newer.write_text("def f(x: int | None = None) -> float | None:\n    return x\n")
    assert vermin(newer).returncode != 0
