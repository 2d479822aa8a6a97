"""scripts/intake_reply.py: the harness's acceptance rules, each decision's reason, the candidate folder, exits.

Replies are written here in the seeds' format. `harness_reference` is the tests' transcription of
DreamTeam's parse_python_blocks rules (tests/dreamteam_harness.py), the oracle for what the harness writes.
"""

import json
import re
import subprocess
import sys

import pytest
from conftest import REPO
from dreamteam_harness import FILES, harness_files

from odegpt_eval import intake as intake_reply

FENCE = "`" * 3
REAL_TRAIN = (REPO / "train_mps.py").read_text(encoding="utf-8")
REAL_MODEL = (REPO / "model.py").read_text(encoding="utf-8")
SMALL_MODEL = "import math\n\n\ndef width():\n    return math.sqrt(4)\n"
# A valid change of train_mps.py that keeps every constraint: one comment line more.
TUNED_TRAIN = REAL_TRAIN.replace("\n", "\n# tuned: a harmless edit\n", 1)


def block(name: str, code: str) -> str:
    return f"{FENCE}python\n{name}\n{code}\n{FENCE}\n"


def reply_of(train: str, model: str, preamble: str = "Here are my changes.\n\n") -> str:
    return preamble + block("train_mps.py", train) + "\nand\n\n" + block("model.py", model) + "\nDone.\n"


def harness_reference(reply: str, originals: dict) -> dict | None:
    """What DreamTeam's harness writes for each file, or None when it ignores the candidate: the tests'
    own transcription of its rules (tests/dreamteam_harness.py), independent of the script."""
    return harness_files(reply, {name: originals.get(name) for name in FILES})


@pytest.fixture
def base(tmp_path):
    """A base folder: the repo's train_mps.py and a small model.py as the current versions."""
    folder = tmp_path / "base"
    folder.mkdir()
    (folder / "train_mps.py").write_text(REAL_TRAIN, encoding="utf-8")
    (folder / "model.py").write_text(SMALL_MODEL, encoding="utf-8")
    return folder


def run(tmp_path, base, reply: str, *extra, name="reply.md", out="cand"):
    path = tmp_path / name
    path.write_text(reply, encoding="utf-8")
    argv = [str(path), "--base-dir", str(base), "--out", str(tmp_path / out), *extra]
    return intake_reply.main(argv)


def originals_of(base):
    return {n: (base / n).read_text(encoding="utf-8") for n in intake_reply.SOURCE_FILES}


# --- the rules ------------------------------------------------------------------------------------------


def test_pattern_is_the_harness_regex():
    assert intake_reply.harness_pattern("train_mps.py").pattern == r"```python\s*train_mps\.py\s*\n(.*?)```"
    assert intake_reply.harness_pattern("model.py").pattern == r"```python\s*model\.py\s*\n(.*?)```"


def test_extract_block_first_match_stripped():
    reply = f"x\n{FENCE}python model.py\n\n  import os  \n\n{FENCE}\n{FENCE}python\nmodel.py\nimport sys\n{FENCE}"
    assert intake_reply.extract_block(reply, "model.py") == "import os"
    assert intake_reply.extract_block(reply, "train_mps.py") == ""


@pytest.mark.parametrize(
    "code, accepted",
    [
        ("import os\nx = 1", True),
        ("importlib_free = 1", True),  # the harness only checks the prefix
        ("", False),
        ('"""Doc."""\nimport os', False),
        ("# comment\nimport os", False),
        ("#!/usr/bin/env python\nimport os", False),
        ("from os import path", False),
        ("import os\ndef f(:\n    pass", False),
    ],
)
def test_block_problem_agrees_with_the_harness(code, accepted):
    reference = harness_reference(block("model.py", code) + block("train_mps.py", "import os"), {"model.py": "ORIG"})
    assert (reference["model.py"] == code) == accepted
    assert (intake_reply.block_problem(code) is None) == accepted


def test_repo_files_are_accepted_as_they_are():
    """The repo's own model.py and train_mps.py, pasted into a reply, reach the harness unchanged."""
    reply = reply_of(REAL_TRAIN, REAL_MODEL)
    for name, text in (("train_mps.py", REAL_TRAIN), ("model.py", REAL_MODEL)):
        assert intake_reply.block_problem(text) is None, name
        assert intake_reply.backtick_cut(reply, name) is None, name
    parsed = intake_reply.parse_reply(reply, {"train_mps.py": REAL_TRAIN, "model.py": REAL_MODEL})
    for d in parsed.files.values():
        assert d.status == "unchanged" and d.harness_uses == "block" and d.text == d.text.strip()
    assert not parsed.rejected and not parsed.harness_ignores
    assert harness_reference(reply, {}) == {"train_mps.py": REAL_TRAIN.strip(), "model.py": REAL_MODEL.strip()}


# --- accepted replies -----------------------------------------------------------------------------------


def test_both_changed_writes_the_stripped_blocks(tmp_path, base, capsys):
    new_model = "import math\n\nWIDTH = 3\n"
    reply = reply_of("\n\n" + TUNED_TRAIN + "\n\n", new_model)
    assert run(tmp_path, base, reply) == 0
    out = tmp_path / "cand"
    assert sorted(p.name for p in out.iterdir()) == ["intake.json", "model.py", "train_mps.py"]
    assert (out / "train_mps.py").read_text(encoding="utf-8") == TUNED_TRAIN.strip()  # no newline added
    assert (out / "model.py").read_text(encoding="utf-8") == new_model.strip()
    assert harness_reference(reply, originals_of(base)) == {
        n: (out / n).read_text(encoding="utf-8") for n in intake_reply.SOURCE_FILES
    }

    record = json.loads((out / "intake.json").read_text())
    assert record["reply_sha256"] == intake_reply.sha256_bytes((tmp_path / "reply.md").read_bytes())
    for name in intake_reply.SOURCE_FILES:
        entry = record["files"][name]
        assert entry["status"] == "changed" and entry["harness_uses"] == "block" and entry["reason"] is None
        assert entry["sha256"] == intake_reply.sha256_bytes((out / name).read_bytes())
    assert record["check_constraints"]["ok"] and record["verdict"] == "accepted"

    text = capsys.readouterr().out
    assert re.search(r"train_mps\.py\s+changed", text) and re.search(r"model\.py\s+changed", text)
    command = next(line.strip() for line in text.splitlines() if "scripts/benchmark.py" in line)
    assert str(out) in command and "--configs canonical" in command and "--baseline canonical" in command
    assert "--seeds 0 1 2" in command and command == record["benchmark_command"]
    assert not list(tmp_path.glob(".cand.*"))  # no temporary folder left over


def test_empty_block_keeps_the_original_byte_for_byte(tmp_path, base, capsys):
    (base / "model.py").write_bytes(b"  # leading blanks and trailing newlines kept\nimport math\nX = 1\n\n\n")
    assert run(tmp_path, base, reply_of(TUNED_TRAIN, "")) == 0
    assert (tmp_path / "cand" / "model.py").read_bytes() == (base / "model.py").read_bytes()
    assert "unchanged (empty block)" in capsys.readouterr().out
    record = json.loads((tmp_path / "cand" / "intake.json").read_text())
    assert record["files"]["model.py"]["harness_uses"] == "original"


# --- rejected blocks ------------------------------------------------------------------------------------

REJECTED = {
    "docstring": ('"""Model for the tiny GPT."""\nimport math\nX = 1', ["first line", "import", "docstring"]),
    "from-import": ("from math import sqrt\nimport os\nX = sqrt(4)", ["first line", "`import os`", "line 2"]),
    "syntax-error": ("import math\n\ndef f(:\n    return 1", ["SyntaxError at line 3"]),
    "backtick-in-string": (f'import re\nFENCE = "{FENCE}"\nX = 1', ["triple backtick at line 2", "cuts"]),
    "placeholder": ("# Your modified model.py code here", ["only comments", "empty"]),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_rejected_block_is_explained_and_nothing_written(tmp_path, base, capsys, case):
    code, words = REJECTED[case]
    reply = reply_of(TUNED_TRAIN, code)
    parsed = intake_reply.parse_reply(reply, originals_of(base))
    decision = parsed.files["model.py"]
    assert decision.status == "rejected" and decision.harness_uses == "original"
    for word in words:
        assert word in decision.reason, (word, decision.reason)
    assert harness_reference(reply, originals_of(base))["model.py"] == SMALL_MODEL

    assert run(tmp_path, base, reply) == 1
    text = capsys.readouterr().out
    assert "REJECTED" in text and "the harness would use the current model.py" in text
    assert not (tmp_path / "cand").exists()


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_accept_like_harness_falls_back_to_the_original(tmp_path, base, capsys, case):
    reply = reply_of(TUNED_TRAIN, REJECTED[case][0])
    assert run(tmp_path, base, reply, "--accept-like-harness") == 0
    out = tmp_path / "cand"
    assert (out / "model.py").read_bytes() == (base / "model.py").read_bytes()
    assert (out / "train_mps.py").read_text(encoding="utf-8") == TUNED_TRAIN.strip()
    record = json.loads((out / "intake.json").read_text())
    assert record["files"]["model.py"]["status"] == "rejected" and record["verdict"] == "accepted-like-harness"
    assert "--accept-like-harness" in capsys.readouterr().out


def test_backtick_that_leaves_valid_code_writes_the_truncated_file_like_the_harness(tmp_path, base):
    reply = reply_of(TUNED_TRAIN, f"import math\nX = 1  # see {FENCE}\nY = 2")
    decision = intake_reply.parse_reply(reply, originals_of(base)).files["model.py"]
    assert decision.status == "rejected" and "triple backtick at line 2" in decision.reason
    assert decision.harness_uses == "truncated block"
    assert run(tmp_path, base, reply) == 1
    assert run(tmp_path, base, reply, "--accept-like-harness") == 0
    written = (tmp_path / "cand" / "model.py").read_text(encoding="utf-8")
    assert written == harness_reference(reply, originals_of(base))["model.py"] == "import math\nX = 1  # see"


def test_lone_backtick_line_inside_a_string_is_found(base):
    reply = reply_of(TUNED_TRAIN, f"import math\nDOC = '''\n{FENCE}\nexample\n'''")
    decision = intake_reply.parse_reply(reply, originals_of(base)).files["model.py"]
    assert decision.status == "rejected" and "triple backtick at line 3" in decision.reason


def test_missing_block_and_duplicate_blocks_are_reported(base):
    reply = "Only one file:\n\n" + block("train_mps.py", "# placeholder") + block("train_mps.py", TUNED_TRAIN)
    parsed = intake_reply.parse_reply(reply, originals_of(base))
    assert "no ```python model.py block found" in parsed.files["model.py"].reason
    assert any("only the first" in note for note in parsed.files["train_mps.py"].notes)
    assert parsed.harness_ignores  # the first train_mps.py block is the placeholder


def test_both_invalid_is_ignored_and_nothing_written(tmp_path, base, capsys):
    reply = reply_of('"""Doc."""\nimport os', "import math\ndef f(:\n    pass")
    assert harness_reference(reply, originals_of(base)) is None
    assert run(tmp_path, base, reply, "--accept-like-harness") == 1
    assert "harness would ignore this candidate" in capsys.readouterr().out
    assert not (tmp_path / "cand").exists() and not list(tmp_path.glob(".cand.*"))


# --- constraints, the folder, the command line ----------------------------------------------------------


def test_fixed_block_violation_is_written_and_exits_1(tmp_path, base, capsys):
    assert "\nbatch_size = 8\n" in REAL_TRAIN
    bigger = REAL_TRAIN.replace("\nbatch_size = 8\n", "\nbatch_size = 16\n")
    assert run(tmp_path, base, reply_of(bigger, "")) == 1
    text = capsys.readouterr().out
    assert "fixed-block" in text and "batch_size = 16" in text and "benchmark will refuse" in text
    out = tmp_path / "cand"
    assert (out / "train_mps.py").read_text(encoding="utf-8") == bigger.strip()
    record = json.loads((out / "intake.json").read_text())
    assert not record["check_constraints"]["ok"] and record["verdict"] == "violations"
    assert any(v["rule"] == "fixed-block" for v in record["check_constraints"]["violations"])


def test_existing_folder_is_refused_without_force(tmp_path, base, capsys):
    out = tmp_path / "cand"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    reply = reply_of(TUNED_TRAIN, "")
    assert run(tmp_path, base, reply) == 2
    assert "not empty" in capsys.readouterr().err
    assert run(tmp_path, base, reply, "--force") == 2  # not a folder this script wrote
    assert "no intake.json" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_force_replaces_a_previous_candidate(tmp_path, base):
    assert run(tmp_path, base, reply_of(TUNED_TRAIN, "")) == 0
    assert run(tmp_path, base, reply_of(TUNED_TRAIN, "import math\nY = 2")) == 2
    assert run(tmp_path, base, reply_of(TUNED_TRAIN, "import math\nY = 2"), "--force") == 0
    assert (tmp_path / "cand" / "model.py").read_text() == "import math\nY = 2"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cand.")]


def test_failed_write_leaves_nothing(tmp_path, base, monkeypatch):
    def fail(path, data):
        if path.name == "intake.json":
            raise OSError("disk full")
        path.write_bytes(data)

    monkeypatch.setattr(intake_reply, "_write_bytes", fail)
    with pytest.raises(OSError, match="disk full"):
        run(tmp_path, base, reply_of(TUNED_TRAIN, ""))
    assert not (tmp_path / "cand").exists() and not list(tmp_path.glob(".cand.*"))


def test_missing_reply_file_exits_2(tmp_path, base, capsys):
    argv = [str(tmp_path / "nope.md"), "--base-dir", str(base), "--out", str(tmp_path / "cand")]
    assert intake_reply.main(argv) == 2
    assert "nope.md not found" in capsys.readouterr().err
    assert not (tmp_path / "cand").exists()


def test_base_dir_without_the_files_exits_2(tmp_path, capsys):
    (tmp_path / "reply.md").write_text(reply_of(TUNED_TRAIN, ""))
    assert intake_reply.main([str(tmp_path / "reply.md"), "--base-dir", str(tmp_path)]) == 2
    assert "lacks" in capsys.readouterr().err


def test_stdin_reply_from_the_command_line(tmp_path, base):
    out = tmp_path / "from-stdin"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "intake_reply.py"), "-", "--base-dir", str(base), "--out", str(out)],
        input=reply_of(TUNED_TRAIN, "import math\nZ = 3").encode(),
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert (out / "model.py").read_text() == "import math\nZ = 3"
    assert json.loads((out / "intake.json").read_text())["reply"] == "stdin"
