"""scripts/fixed_block_probe.py: train() with fixed-block values the harness forbids, scored as the runner scores
a candidate, on a private copy of train_mps (tiny synthetic data, a few iterations)."""

import json
import math
import sys

import pytest
from conftest import REPO, write_bins

sys.path.insert(0, str(REPO / "scripts"))
import fixed_block_probe as probe  # noqa: E402

import levers  # noqa: E402
import train_mps  # noqa: E402


def test_sets_are_fixed_block_names_with_positive_integers():
    assert probe.parse_sets(["n_embd=64", "max_iters=20002"]) == {"n_embd": 64, "max_iters": 20002}
    for bad, message in [
        (["block_size=128"], "NAME one of"),  # the window the losses are measured on stays
        (["n_embd"], "NAME=INTEGER"),
        (["n_embd=6.4"], "not an integer"),
        (["n_embd=0"], ">= 1"),
        (["n_embd=64", "n_embd=96"], "twice"),
    ]:
        with pytest.raises(probe.ProbeError, match=message):
            probe.parse_sets(bad)


def test_a_probe_that_cannot_run_stops_before_any_work(tmp_path, capsys):
    data = write_bins(tmp_path / "data")
    out = tmp_path / "p.json"
    base = ["--data-dir", str(data), "--out", str(out)]
    assert probe.main([*base, "--set", "n_embd=30"]) == 2  # 30 is no multiple of 4 heads
    assert "n_head" in capsys.readouterr().err
    assert probe.main([*base, "--recipe", "solver=nope"]) == 2
    assert probe.main(["--data-dir", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "make data" in capsys.readouterr().err
    assert probe.main([*base, "--ckpt", str(tmp_path / "none.pt")]) == 2  # --ckpt: a checkpoint that is there
    assert "no checkpoint" in capsys.readouterr().err
    (tmp_path / "c.pt").write_bytes(b"")
    assert probe.main([*base, "--ckpt", str(tmp_path / "c.pt"), "--set", "n_embd=64"]) == 2  # and nothing to train
    assert "drop --set" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "p.work").exists()


def test_probe_trains_the_changed_model_and_scores_it_on_the_held_out_half(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAIN_MPS_MAX_ITERS", "1")  # the shell's setting must not reach the probe's run
    data = write_bins(tmp_path / "data")
    out = tmp_path / "probe" / "wide.json"
    args = ["--data-dir", str(data), "--set", "n_embd=48", "--set", "max_iters=4", "--recipe", "ema_decay=0.0"]
    assert probe.main([*args, "--seed", "1", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["model_args"]["n_embd"] == 48 and r["fixed"]["max_iters"] == 4 and r["fixed"]["n_embd"] == 48
    assert r["recipe"]["ema_decay"] == 0.0 and r["recipe"]["seed"] == 1
    assert all(math.isfinite(r[k]) for k in ("trusted_test_loss", "candidate_val_loss", "train_slice_loss"))
    # random tokens: the trained model is near the uniform loss over the vocabulary, as the n-gram is
    assert abs(r["trusted_test_loss"] - math.log(50304)) < 2.0
    assert set(r["kneser_ney_heldout_test"]) == {"2", "3", "4", "5"}
    assert r["heldout"]["test_start"] > 0 and not out.with_name("wide.work").exists()
    assert train_mps.n_embd == 32 and train_mps.max_iters == 10001  # the repo's module is untouched
    # --table puts finished probes side by side, with the gap to the best Kneser-Ney order on the same test half
    md = tmp_path / "probes.md"
    assert probe.main(["--table", str(out), "--out", str(md)]) == 0
    (row,) = [line for line in md.read_text().splitlines() if "wide.json" in line]
    best = min(r["kneser_ney_heldout_test"].values())
    assert "n_embd=48, max_iters=4" in row and f"| {r['trusted_test_loss'] - best:+.3f} |" in row
    # beside a control of the same seed (here its record with the set removed and the loss moved): the probe's
    # median and its paired difference against that control
    control = {**r, "set": {}, "trusted_test_loss": r["trusted_test_loss"] + 0.25}
    (tmp_path / "control.json").write_text(json.dumps(control))
    assert probe.main(["--table", str(out), str(tmp_path / "control.json"), "--out", str(md)]) == 0
    text = md.read_text().splitlines()
    assert "control.json" in text[2] and "wide.json" in text[3]  # controls first
    (summary,) = [line for line in text if line.startswith("| n_embd=48, max_iters=4 | 1 |")]
    assert f"| {r['trusted_test_loss']:.3f} |" in summary and "| -0.250 (s1 -0.250) |" in summary
    (tmp_path / "bad.json").write_text("{}")
    assert probe.main(["--table", str(tmp_path / "bad.json")]) == 2
    # an existing result is kept unless --force
    stamp = out.stat().st_mtime_ns
    assert probe.main([*args, "--out", str(out)]) == 0 and out.stat().st_mtime_ns == stamp


def test_make_probes_probes_the_deciding_tables_recipe():
    """`make probes` (issue #16's evidence) probes the recipe of the deciding table (TEACHER), twice and four times wider and
    with twice the steps, beside a control with the fixed block's values, all at one seed (make's own expansion)."""
    import subprocess

    from odegpt_eval.specs import parse_config, parse_overrides

    def make(*args):
        return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True)

    teacher = make("--eval", "print-%: ; @echo $($*)", "print-TEACHER").stdout.strip()
    lines = [line for line in make("-n", "probes", "PROBE_OUT=/nowhere").stdout.splitlines() if "--recipe" in line]
    assert len(lines) == 4
    (recipe,) = {line.split("--recipe ")[1].split()[0] for line in lines}
    expected = parse_config(teacher, levers.LeverRecipe).overrides
    assert expected and parse_overrides(recipe, levers.LeverRecipe) == expected
    assert sorted(line.split("--set ")[1].split()[0] for line in lines if "--set" in line) == [
        "max_iters=20002",
        "n_embd=128",
        "n_embd=64",
    ]
    assert len({line.split("--seed ")[1].split()[0] for line in lines}) == 1
