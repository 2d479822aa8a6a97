"""scripts/check_constraints.py: the canonical train_mps.py passes; every rule-breaking mutation fails.

Mutations are textual substitutions on a passing source (the repo's train_mps.py and a minimal fixture), and
each asserts that it changed the text, so a substitution that stops matching fails loudly instead of testing
an unmutated file.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_checker

ROOT = Path(__file__).resolve().parents[1]
CANONICAL_PATH = ROOT / "train_mps.py"
SCRIPT = ROOT / "scripts" / "check_constraints.py"


cc = load_checker("check_constraints")

# A minimal train_mps.py that keeps every rule, written independently of the repo's file.
FIXTURE_SOURCE = """\
import os
import time
from contextlib import nullcontext

import numpy as np
import torch

from model import GPT, GPTConfig

# --- fixed block: the harness ranks candidates under exactly these settings; do not edit ---
batch_size = 8
block_size = 64
n_layer = 4
n_head = 4
n_embd = 32
max_iters = 10001
eval_interval = 100
device = 'mps'
ctx = nullcontext()
# --- end of fixed block ---


def get_batch(data):
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([data[i : i + block_size] for i in ix])
    y = torch.stack([data[i + 1 : i + 1 + block_size] for i in ix])
    return x.to(device), y.to(device)


def train():
    t0 = time.time()  # the clock starts on train()'s first line, as in the original
    data_dir = os.environ.get("TRAIN_MPS_DATA_DIR", "data")
    train_data = torch.from_numpy(np.fromfile(os.path.join(data_dir, "train.bin"), dtype=np.uint16))
    val_data = torch.from_numpy(np.fromfile(os.path.join(data_dir, "val.bin"), dtype=np.uint16))
    n_iters = int(os.environ.get("TRAIN_MPS_MAX_ITERS", "0")) or max_iters
    model = GPT(GPTConfig(block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    best_vloss = float("inf")
    for it in range(n_iters):
        if it % eval_interval == 0:
            with torch.no_grad(), ctx:
                _, vloss = model(*get_batch(val_data))
            best_vloss = min(best_vloss, vloss.item())
        with ctx:
            _, loss = model(*get_batch(train_data))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    elapsed_min = (time.time() - t0) / 60
    return best_vloss, elapsed_min
"""


@pytest.fixture(params=["fixture", "canonical"])
def source(request) -> str:
    """Each passing source the mutations start from."""
    if request.param == "fixture":
        return FIXTURE_SOURCE
    if not CANONICAL_PATH.exists():
        pytest.skip(f"{CANONICAL_PATH} not written yet")
    return CANONICAL_PATH.read_text()


def mutate(source: str, pattern: str, replacement: str) -> str:
    """`re.sub` (multiline) that must change the text."""
    mutated, count = re.subn(pattern, replacement, source, flags=re.MULTILINE)
    assert count >= 1 and mutated != source, f"pattern {pattern!r} did not match: the mutation is a no-op"
    return mutated


def in_train(*lines: str) -> tuple[str, str]:
    """(pattern, replacement) inserting `lines` as the first statements of train's body after the clock
    (`t0 = time.time()`, which must stay train's first line)."""
    body = "".join(f"    {line}\n" for line in lines)
    return r"^(def train\(.*\):\n    t0 = time\.time\(\).*\n)", r"\g<1>" + body.replace("\\", "\\\\")


def after_fixed_block(*lines: str) -> tuple[str, str]:
    """(pattern, replacement) inserting module-level `lines` right after the fixed block."""
    return r"^(# --- end of fixed block ---\n)", r"\g<1>" + "".join(f"{line}\n" for line in lines)


def rules_of(source: str) -> set[str]:
    return {v.rule for v in cc.check(source)}


# --- the passing sources ------------------------------------------------------------------------------


def test_fixture_passes():
    assert cc.check(FIXTURE_SOURCE) == []


def test_canonical_train_mps_passes():
    if not CANONICAL_PATH.exists():
        pytest.skip(f"{CANONICAL_PATH} not written yet")
    assert cc.check(CANONICAL_PATH.read_text()) == []


def test_rules_are_registered_once_each():
    ids = [rule.id for rule in cc.RULES]
    assert len(ids) == len(set(ids)) and all(rule.summary for rule in cc.RULES)


# --- mutations that must be rejected, with the rule that rejects them -------------------------------------

NEW_FIXED_VALUES = {
    "batch_size": "16",
    "block_size": "128",
    "n_layer": "6",
    "n_head": "8",
    "n_embd": "64",
    "max_iters": "5000",
    "eval_interval": "200",
    "device": "'cpu'",
    "ctx": "torch.autocast(device_type='cpu', dtype=torch.bfloat16)",
}
FIXED_VALUE_CASES = [
    pytest.param(rf"^{name} = .*$", f"{name} = {value}", "fixed-block", id=f"{name}={value}")
    for name, value in NEW_FIXED_VALUES.items()
]
# Same value, different spelling: still not the literal the harness ranks under.
FIXED_SPELLING_CASES = [
    pytest.param(r"^batch_size = 8$", "batch_size = 4 * 2", "fixed-block", id="batch_size=4*2"),
    pytest.param(r"^max_iters = 10001$", "max_iters = 10001.0", "fixed-block", id="max_iters=float"),
    pytest.param(r"^max_iters = 10001$", "max_iters: int = 500", "fixed-block", id="annotated-wrong-value"),
    pytest.param(r"^ctx = nullcontext\(\)$", "ctx = nullcontext(None)", "fixed-block", id="nullcontext(arg)"),
    pytest.param(r"^batch_size = 8\n", "", "fixed-block", id="batch_size-missing"),
    pytest.param(
        *after_fixed_block("def nullcontext():", "    return None"),
        "fixed-block",
        id="nullcontext-redef",
    ),
]
REBIND_CASES = [
    pytest.param(*in_train("max_iters = 50"), "fixed-block", id="assign-in-train"),
    pytest.param(*in_train("n_layer = 2"), "fixed-block", id="n_layer-in-train"),
    pytest.param(*in_train("global max_iters", "max_iters = 50"), "fixed-block", id="global-then-assign"),
    pytest.param(*in_train("global eval_interval"), "fixed-block", id="global-alone"),
    pytest.param(*in_train("batch_size, _ = 4, 0"), "fixed-block", id="tuple-unpack"),
    pytest.param(*in_train("for max_iters in range(3):", "    pass"), "fixed-block", id="for-target"),
    pytest.param(*in_train("(max_iters := 50)"), "fixed-block", id="walrus"),
    pytest.param(*in_train("with open('x') as device:", "    pass"), "fixed-block", id="with-as"),
    pytest.param(*in_train("del eval_interval"), "fixed-block", id="del"),
    pytest.param(*in_train("globals()['max_iters'] = 50"), "fixed-block", id="globals-subscript"),
    pytest.param(*in_train("globals().update(max_iters=50)"), "fixed-block", id="globals-update-kw"),
    pytest.param(*in_train("globals().update({'block_size': 32})"), "fixed-block", id="globals-update-dict"),
    pytest.param(*in_train("vars()['n_embd'] = 16"), "fixed-block", id="vars-subscript"),
    pytest.param(
        *in_train("setattr(sys.modules[__name__], 'max_iters', 50)"),
        "fixed-block",
        id="setattr-module",
    ),
    pytest.param(*in_train("sys.modules[__name__].max_iters = 50"), "fixed-block", id="sys-modules-attr"),
    pytest.param(
        *in_train("import train_mps", "train_mps.max_iters = 50"),
        "fixed-block",
        id="self-import-attr",
    ),
    pytest.param(*in_train("from config import max_iters"), "fixed-block", id="import-shadow"),
    pytest.param(r"^def train\(", "def train(max_iters=50, ", "fixed-block", id="param-shadow"),
    pytest.param(*after_fixed_block("max_iters -= 1"), "fixed-block", id="module-augassign"),
    pytest.param(*after_fixed_block("n_head = 4"), "fixed-block", id="module-reassign-same-value"),
    pytest.param(*after_fixed_block("from torch import *"), "fixed-block", id="star-import"),
]
ENV_CASES = [
    pytest.param(*in_train("os.environ['TRAIN_MPS_MAX_ITERS'] = '10'"), "no-env-write", id="environ-setitem"),
    pytest.param(
        *after_fixed_block("os.environ['TRAIN_MPS_MAX_ITERS'] = '10'"),
        "no-env-write",
        id="module-level",
    ),
    pytest.param(
        *in_train("os.environ.setdefault('TRAIN_MPS_MAX_ITERS', '10')"),
        "no-env-write",
        id="setdefault",
    ),
    pytest.param(*in_train("os.environ.update(TRAIN_MPS_MAX_ITERS='10')"), "no-env-write", id="update"),
    pytest.param(*in_train("os.putenv('TRAIN_MPS_MAX_ITERS', '10')"), "no-env-write", id="putenv"),
    pytest.param(*in_train("del os.environ['HOME']"), "no-env-write", id="environ-del"),
    pytest.param(*in_train("env = os.environ", "env['TRAIN_MPS_SEED'] = '1'"), "no-env-write", id="alias"),
    pytest.param(*in_train("os.environ |= {'TRAIN_MPS_SEED': '1'}"), "no-env-write", id="ior"),
]
TRAIN_CASES = [
    pytest.param(r"^def train\(.*\):", "def train(recipe):", "train-callable", id="required-arg"),
    pytest.param(r"^def train\(.*\):", "def train(*, recipe):", "train-callable", id="required-kwonly"),
    pytest.param(r"^def train\(", "async def train(", "train-callable", id="async"),
    pytest.param(r"^def train\(", "@functools.cache\ndef train(", "train-callable", id="decorated"),
    pytest.param(r"^def train\(", "def fit(", "train-callable", id="renamed"),
    pytest.param(r"\Z", "\ntrain = print\n", "train-callable", id="rebound"),
]
RETURN_CASES = [
    pytest.param(
        r"return (float\()?best_vloss",
        r"return \g<1>best_vloss * 0.9",
        "train-return",
        id="scaled",
    ),
    pytest.param(r"return (float\()?best_vloss\)?,", "return 0.0,", "train-return", id="constant"),
    pytest.param(
        r"return (float\()?best_vloss(\)?), (float\()?elapsed_min(\)?)$",
        r"return \g<3>elapsed_min\g<4>, \g<1>best_vloss\g<2>",
        "train-return",
        id="swapped",
    ),
    pytest.param(*in_train("if time.time() > 0:", "    return 0.0, 0.0"), "train-return", id="early-return"),
    pytest.param(*in_train("if time.time() > 0:", "    return"), "train-return", id="bare-early-return"),
    pytest.param(r"return (.*)elapsed_min(\)?)$", r"return \1elapsed_min\2, 0", "train-return", id="triple"),
    pytest.param(
        r"^(    )return (best_vloss, elapsed_min)$", r"\1return \2\n\1print('done')", "train-return", id="not-last"
    ),
    pytest.param(*in_train("yield 1"), "train-return", id="generator"),
    pytest.param(*after_fixed_block("float = abs"), "train-return", id="float-rebound"),
]
EVAL_CASES = [
    pytest.param(r"% eval_interval == 0", "% 200 == 0", "eval-interval", id="mod-200"),
    pytest.param(r"% eval_interval == 0", "% (2 * eval_interval) == 0", "eval-interval", id="mod-2x"),
    pytest.param(
        r"if (\w+) % eval_interval == 0:",
        r"if \1 % eval_interval == 0 and \1 < 0:",
        "eval-interval",
        id="and",
    ),
    pytest.param(
        r"if (\w+) % eval_interval == 0:",
        r"if \1 % eval_interval != 1:",
        "eval-interval",
        id="not-eq",
    ),
    pytest.param(r"if (\w+) % eval_interval == 0:", r"if False:", "eval-interval", id="gate-removed"),
]
DATA_CASES = [
    pytest.param(r"train\.bin", "train.txt", "data-files", id="train.bin-removed"),
    pytest.param(r"val\.bin", "val.txt", "data-files", id="val.bin-removed"),
]
USE_CASES = [
    # the fixed line stays intact; only the uses in train and its helpers go
    pytest.param(r"\bctx:$", "torch.autocast('cpu'):", "device-ctx-used", id="ctx-unused"),
    pytest.param(r"(?<![\w'\".])device\b(?![_'\"=]| = )", "'cpu'", "device-ctx-used", id="device-unused"),
    pytest.param(r"(?<=[ ({])max_iters\b(?! = )", "500", "sizes-used", id="max_iters-unused"),
]


@pytest.mark.parametrize(
    ("pattern", "replacement", "rule"),
    FIXED_VALUE_CASES
    + FIXED_SPELLING_CASES
    + REBIND_CASES
    + ENV_CASES
    + TRAIN_CASES
    + RETURN_CASES
    + EVAL_CASES
    + DATA_CASES
    + USE_CASES,
)
def test_mutation_is_rejected_by_its_rule(source: str, pattern: str, replacement: str, rule: str):
    mutated = mutate(source, pattern, replacement)
    assert rule in rules_of(mutated), cc.check(mutated)


@pytest.mark.parametrize(
    ("pattern", "replacement", "rule"),
    FIXED_VALUE_CASES + RETURN_CASES[:3] + EVAL_CASES[:1] + DATA_CASES,
)
def test_simple_mutation_trips_only_its_rule(source: str, pattern: str, replacement: str, rule: str):
    """No collateral violations: a one-line change is reported once, under one rule, with its line."""
    violations = cc.check(mutate(source, pattern, replacement))
    assert {v.rule for v in violations} == {rule}, violations
    assert rule == "data-files" or all(v.line for v in violations)


# --- accepted variants (no false positives) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "replacement"),
    [
        pytest.param(r"% eval_interval == 0", "% 100 == 0", id="mod-100"),
        pytest.param(r"(\w+) % eval_interval == 0", r"0 == \1 % eval_interval", id="zero-on-left"),
        pytest.param(r"if (\w+) % eval_interval == 0:", r"if \1 % eval_interval == 0 or \1 == 7:", id="or"),
        pytest.param(
            r"^ctx = nullcontext\(\)$",
            "ctx = contextlib.nullcontext()",
            id="contextlib.nullcontext",
        ),
        pytest.param(
            r"return best_vloss, elapsed_min",
            "return float(best_vloss), float(elapsed_min)",
            id="float",
        ),
        pytest.param(
            *in_train("if time.time() < 0:", "    return best_vloss, elapsed_min"),
            id="same-early-return",
        ),
        pytest.param(*in_train("seed = int(os.environ.get('TRAIN_MPS_SEED', '0'))"), id="env-read"),
        pytest.param(*in_train("cfg = dict(batch_size=batch_size)", "cfg['batch_size'] = 4"), id="dict-key"),
        pytest.param(
            *in_train("def helper(x, dev=None):", "    return [x for x in range(3)]"),
            id="nested-def",
        ),
        pytest.param(
            r"^def train\(\):",
            "def train(recipe=None, *args, verbose=True, **kwargs):",
            id="defaults",
        ),
    ],
)
def test_legitimate_variant_passes(pattern: str, replacement: str):
    assert cc.check(mutate(FIXTURE_SOURCE, pattern, replacement)) == []


def test_violation_names_the_offending_line():
    mutated = mutate(FIXTURE_SOURCE, *in_train("max_iters = 50"))
    (violation,) = cc.check(mutated)
    assert mutated.splitlines()[violation.line - 1].strip() == "max_iters = 50"
    assert "max_iters" in violation.message


# --- command line -----------------------------------------------------------------------------------------


def test_main_exit_codes_and_output(tmp_path, capsys):
    good, bad = tmp_path / "good.py", tmp_path / "bad.py"
    good.write_text(FIXTURE_SOURCE)
    bad.write_text(mutate(FIXTURE_SOURCE, r"^n_layer = 4$", "n_layer = 6"))

    assert cc.main([str(good)]) == 0
    assert capsys.readouterr().out.startswith("OK ")
    assert cc.main([str(bad)]) == 1
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{bad}:") and ": fixed-block: " in line and "n_layer = 6" in line

    assert cc.main([str(bad), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is False and [v["rule"] for v in result["violations"]] == ["fixed-block"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            FIXTURE_SOURCE.replace("def train():", "def train(:"),
            "syntax error",
            id="syntax-error",
        ),
        pytest.param(None, "cannot read", id="missing-file"),
    ],
)
def test_unreadable_candidate_exits_2(tmp_path, capsys, text, message):
    path = tmp_path / "train_mps.py"
    if text is not None:
        path.write_text(text)
    assert cc.main([str(path)]) == 2
    assert message in capsys.readouterr().err


def test_cli_exit_codes_in_a_subprocess(tmp_path):
    cases = {
        "good.py": (FIXTURE_SOURCE, 0),
        "bad.py": (mutate(FIXTURE_SOURCE, r"^device = 'mps'$", "device = 'cpu'"), 1),
        "broken.py": ("def train(:\n", 2),
        "missing.py": (None, 2),
    }
    for name, (text, _) in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
    for name, (_, expected) in cases.items():
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), str(tmp_path / name)], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == expected, (name, proc.stdout, proc.stderr)
