"""Take a specialist's reply in the seeds' format into a candidate folder, by the harness's own rules.

The DreamTeam harness (kevinbdsouza/DreamTeam, src/dreamteam/main.py) asks for two blocks,
```python\\ntrain_mps.py\\n...``` and ```python\\nmodel.py\\n...```, and for each file takes the first match of
r'```python\\s*<name>\\s*\\n(.*?)```' (re.DOTALL), stripped. A block counts only if it is non-empty, its first
line starts with `import` and `compile()` accepts it; an invalid or empty block silently becomes the current
file, and a reply whose two blocks are both invalid or empty is ignored. The harness only prints a warning
for each of these; this script says which rule a block breaks and how to fix it, then writes the candidate
folder exactly as the harness would write it and checks its train_mps.py with scripts/check_constraints.py.

Usage:
    python scripts/intake_reply.py REPLY                      # -> candidates/<REPLY stem>/
    python scripts/intake_reply.py - --out candidates/X < reply.md
    python scripts/intake_reply.py REPLY --accept-like-harness  # a rejected block falls back, as in the harness
    python scripts/intake_reply.py REPLY --base-dir DIR --out DIR2 --force

The folder holds train_mps.py and model.py (a block's stripped text, no trailing newline added, as the harness
writes it; the current file byte for byte where the harness falls back) and intake.json (the reply's sha256,
each file's decision and reason and sha256, the check_constraints result, the benchmark command). It is built
under a temporary name beside its destination and renamed into place, so a failure leaves nothing half-written.

Exit status: 0 both blocks accepted (or --accept-like-harness) and check_constraints clean; 1 a block rejected
(nothing written), the harness would ignore the reply (nothing written), or check_constraints violations
(written: the benchmark will refuse it); 2 a usage or input error (nothing written).

In-process: `extract_block(reply, name)`, `block_problem(code)`, `backtick_cut(reply, name)`,
`parse_reply(reply, originals) -> ParsedReply`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import sys
import warnings
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from . import constraints

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT_ROOT = ROOT / "candidates"
SOURCE_FILES = ("train_mps.py", "model.py")  # the harness's order
FENCE = "`" * 3
# A fence line that opens a block (```python, ```py, ...) and one that only closes it.
_OPENING_FENCE = re.compile(r"^[ \t]*" + FENCE + r"[ \t]*[\w+-]", re.MULTILINE)
_LONE_FENCE = re.compile(r"^[ \t]*" + FENCE + r"`*[ \t]*$", re.MULTILINE)
_DOCSTRING_START = re.compile(r"^[rRbBuUfF]{0,2}(\"\"\"|'''|\"|')")


class IntakeError(RuntimeError):
    """A usage or input error found before anything is written; the message says what to change."""


# --- the harness's rules ---------------------------------------------------------------------------------


def harness_pattern(name: str) -> re.Pattern[str]:
    """The harness's regex for one file's block (re.escape gives exactly its `train_mps\\.py`)."""
    return re.compile(FENCE + r"python\s*" + re.escape(name) + r"\s*\n(.*?)" + FENCE, re.DOTALL)


def extract_block(reply: str, name: str) -> str:
    """The harness's text for `name`: the first match's group(1), stripped; "" when no block matches."""
    match = harness_pattern(name).search(reply)
    return match.group(1).strip() if match else ""


def _preview(line: str, width: int = 40) -> str:
    return repr(line if len(line) <= width else line[: width - 3] + "...")


def _first_line_fix(code: str, first: str) -> str:
    lines = code.split("\n")
    if _DOCSTRING_START.match(first):
        return "move the docstring into # comments below the first `import` line"
    if first.startswith("#!"):
        return "drop the shebang line (the harness imports the file, it never executes it)"
    if first.startswith("#"):
        if all(not line.strip() or line.strip().startswith("#") for line in lines):
            return (
                "the block holds only comments (the format's placeholder?): leave the block empty to keep the "
                "current file, or paste the whole file"
            )
        return "move the comment lines below the first `import` line"
    if first.startswith("from __future__"):
        return (
            "drop the `from __future__` import: it must be the file's first statement, so no `import` line can "
            "come before it"
        )
    plain = next((i for i, line in enumerate(lines) if re.match(r"import\s", line)), None)
    if first.startswith("from "):
        if plain is not None:
            return f"move `{lines[plain].strip()}` (line {plain + 1}) above it, or add a plain `import ...` line first"
        return "put a plain `import ...` line (e.g. `import os`) above it"
    return "start the file with a plain `import ...` line"


def block_problem(code: str) -> str | None:
    """Why the harness rejects the block `code` (rule and fix), or None when it accepts it.

    The rules, in the harness's order: non-empty after strip; the first line, stripped, starts with `import`
    (so a docstring, a comment, a shebang or `from x import y` first is rejected); compile(code, '<string>',
    'exec') raises no SyntaxError."""
    code = code.strip()
    if not code:
        return "the block is empty"
    first = code.split("\n")[0].strip()
    if not first.startswith("import"):
        return (
            f"first line is {_preview(first)} but the harness accepts a block only if its first line starts "
            f"with `import`: {_first_line_fix(code, first)}"
        )
    try:
        with warnings.catch_warnings():  # a SyntaxWarning is only a warning in the harness, even under -W error
            warnings.simplefilter("ignore")
            compile(code, "<string>", "exec")
    except SyntaxError as e:
        lines = code.split("\n")
        text = lines[e.lineno - 1].strip() if e.lineno and 0 < e.lineno <= len(lines) else ""
        where = f" in {_preview(text)}" if text else ""
        return f"SyntaxError at line {e.lineno}: {e.msg}{where}; the harness's compile() fails, fix the code"
    except ValueError as e:  # null bytes on Python < 3.12: the harness's parse raises and drops the reply
        return f"compile() raises ValueError ({e}); remove the offending characters"
    return None


def _line_of(code_before: str) -> int:
    return code_before.count("\n") + 1


def backtick_cut(reply: str, name: str) -> int | None:
    """The line of `name`'s stripped block at which a triple backtick inside the code ended the harness's
    block early, or None. Detected when the closing ``` has code after it on its line, when a lone fence line
    follows it before any opening fence (the block's real end), or, for a ``` alone on a line, when the text
    up to the next lone fence compiles where the cut text does not (a ``` line inside a string)."""
    match = harness_pattern(name).search(reply)
    if match is None:
        return None
    raw, cut = match.group(1), match.end(1)
    line = _line_of(raw.lstrip())
    line_end = reply.find("\n", cut)
    after_on_line = reply[cut + len(FENCE) : line_end if line_end != -1 else len(reply)]
    if after_on_line.strip("`").strip():
        return line
    next_open = _OPENING_FENCE.search(reply, line_end if line_end != -1 else len(reply))
    limit = next_open.start() if next_open else len(reply)
    lone = _LONE_FENCE.search(reply, match.start(1), limit)
    if lone is None:
        return None
    fence_at = lone.start() + len(lone.group()) - len(lone.group().lstrip())
    if fence_at > cut:
        return line  # the block's own closing fence comes later: the cut was inside the code
    later = _LONE_FENCE.search(reply, lone.end(), limit)
    if later is not None and block_problem(raw) is not None:
        if block_problem(reply[match.start(1) : later.start()]) is None:
            return line
    return None


# --- one reply -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FileDecision:
    name: str
    status: str  # "changed" | "unchanged" | "rejected"
    label: str  # one line for the report: "changed: +3 -1 lines", "unchanged (empty block)", "REJECTED: ..."
    reason: str | None  # for "rejected": the rule broken and the fix
    harness_uses: str  # what the harness writes: "block", "truncated block" or "original"
    text: str  # that text
    block_line: int | None  # line of the reply where the block's code starts; None: no block
    notes: tuple[str, ...] = ()

    def record(self) -> dict:
        keys = ("status", "label", "reason", "harness_uses", "block_line", "notes")
        return {k: getattr(self, k) if k != "notes" else list(self.notes) for k in keys}


@dataclasses.dataclass(frozen=True)
class ParsedReply:
    files: dict[str, FileDecision]

    @property
    def harness_ignores(self) -> bool:
        """Both blocks invalid or empty: the harness skips the candidate."""
        return all(d.harness_uses == "original" for d in self.files.values())

    @property
    def rejected(self) -> list[FileDecision]:
        return [d for d in self.files.values() if d.status == "rejected"]


def _diff_stat(old: str, new: str) -> str:
    added = removed = 0
    for line in difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=0):
        if line.startswith("+") and not line.startswith("+++"):
            added += 1
        elif line.startswith("-") and not line.startswith("---"):
            removed += 1
    return f"+{added} -{removed} lines"


def decide_file(reply: str, name: str, original: str) -> FileDecision:
    """What the harness does with `name`'s block, and why, in words."""
    matches = list(harness_pattern(name).finditer(reply))
    notes: list[str] = []
    if len(matches) > 1:
        lines = ", ".join(str(reply.count("\n", 0, m.start()) + 1) for m in matches)
        notes.append(
            f"the reply holds {len(matches)} {FENCE}python {name} blocks (reply lines {lines}); the harness reads "
            "only the first"
        )
    fallback = f"the harness would use the current {name} instead (it only prints a warning)"
    if not matches:
        hint = (
            f" (the reply names {name}, but the harness needs {FENCE}python then {name} on the same or the next line)"
            if name in reply
            else ""
        )
        reason = f"no {FENCE}python {name} block found{hint}; give an empty block to keep the file unchanged"
        return FileDecision(name, "rejected", f"REJECTED: {reason}", reason, "original", original, None, (fallback,))
    match = matches[0]
    raw = match.group(1)
    code = raw.strip()
    block_line = reply.count("\n", 0, match.start(1) + len(raw) - len(raw.lstrip())) + 1
    problem = block_problem(code) if code else None
    cut_line = backtick_cut(reply, name)
    if cut_line is not None:
        reason = (
            f"the block holds a triple backtick at line {cut_line}, so the harness's regex cuts the file there: "
            'spell it "`" * 3 in code and avoid it in comments and strings'
        )
        if problem is not None or not code:
            notes.append(f"the cut file is rejected ({problem or 'empty'}); {fallback}")
            return FileDecision(
                name, "rejected", f"REJECTED: {reason}", reason, "original", original, block_line, notes
            )
        notes.append(f"the cut file still compiles: the harness would run it, cut inside line {cut_line}")
        return FileDecision(name, "rejected", f"REJECTED: {reason}", reason, "truncated block", code, block_line, notes)
    if not code:
        return FileDecision(name, "unchanged", "unchanged (empty block)", None, "original", original, block_line, notes)
    if problem is not None:
        notes.append(fallback)
        return FileDecision(name, "rejected", f"REJECTED: {problem}", problem, "original", original, block_line, notes)
    if code == original.strip():
        label = "unchanged (the block repeats the current file)"
        return FileDecision(name, "unchanged", label, None, "block", code, block_line, notes)
    label = f"changed: {_diff_stat(original, code)}"
    return FileDecision(name, "changed", label, None, "block", code, block_line, notes)


def parse_reply(reply: str, originals: Mapping[str, str]) -> ParsedReply:
    """Each file's decision, under the harness's rules; `originals` maps file name -> current text."""
    return ParsedReply({name: decide_file(reply, name, originals[name]) for name in SOURCE_FILES})


# --- check_constraints, the benchmark command, the folder ----------------------------------------------


def check_train_mps(source: str) -> dict:
    """The static checker's (constraints.py) `check` on one train_mps.py: {"ok", "error", "rules", "violations"}."""
    checker = constraints
    rules = [r.id for r in checker.RULES]
    try:
        violations = checker.check(source, filename="train_mps.py")
    except SyntaxError as e:
        return {"ok": False, "error": f"syntax error at line {e.lineno}: {e.msg}", "rules": rules, "violations": []}
    found = [dataclasses.asdict(v) for v in violations]
    return {"ok": not found, "error": None, "rules": rules, "violations": found}


def _shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def benchmark_command(candidate: Path, baseline: str = "canonical") -> str:
    python = ".venv/bin/python" if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
    folder = shlex.quote(_shown(candidate))
    base = shlex.quote(baseline)
    return f"{python} scripts/benchmark.py --configs {base} {folder} --baseline {base} --seeds 0 1 2 --jobs 2"


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse to replace anything but an empty folder or, with --force, a folder this script wrote."""
    if not out.exists():
        return
    if not out.is_dir():
        raise IntakeError(f"--out {out} exists and is not a folder")
    if not any(out.iterdir()):
        return
    if not force:
        raise IntakeError(f"{out} exists and is not empty; pass --force to replace it, or choose another --out")
    if not (out / "intake.json").is_file():
        raise IntakeError(
            f"refusing to replace {out} even with --force: it holds no intake.json, so this script did not write it"
        )


def write_candidate(out: Path, files: Mapping[str, bytes], force: bool) -> None:
    """Build the folder under a temporary name beside `out`, then rename it into place (replacing an old one)."""
    check_out_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    old = None
    try:
        for name, data in files.items():
            _write_bytes(tmp / name, data)
        if out.exists() and any(out.iterdir()):
            old = out.parent / f".{out.name}.{secrets.token_hex(4)}.old"
            os.rename(out, old)
        try:
            os.rename(tmp, out)  # onto a missing or empty folder
        except OSError:
            if old is not None:
                os.rename(old, out)
                old = None
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- command line ----------------------------------------------------------------------------------------


def say(message: str = "") -> None:
    print(message, flush=True)


def read_reply(spec: str) -> tuple[bytes, str]:
    if spec == "-":
        data = sys.stdin.buffer.read()
    else:
        path = Path(spec)
        if not path.is_file():
            raise IntakeError(f"reply file {spec} not found" if not path.exists() else f"reply {spec} is not a file")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise IntakeError(f"cannot read reply {spec}: {e}") from None
    try:
        return data, data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise IntakeError(f"reply {spec} is not UTF-8 text: {e}") from None


def read_originals(base_dir: Path) -> dict[str, bytes]:
    if not base_dir.is_dir():
        raise IntakeError(f"--base-dir {base_dir} is not a folder")
    missing = [name for name in SOURCE_FILES if not (base_dir / name).is_file()]
    if missing:
        raise IntakeError(f"--base-dir {base_dir} lacks {', '.join(missing)} (the current versions)")
    originals = {name: (base_dir / name).read_bytes() for name in SOURCE_FILES}
    for name, data in originals.items():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise IntakeError(f"{base_dir / name} is not UTF-8 text: {e}") from None
    return originals


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reply", help="the reply, a text file in the seeds' format, or - for stdin")
    p.add_argument(
        "--out",
        type=Path,
        help="candidate folder (default candidates/<reply stem>, or candidates/reply-<sha256 prefix> for stdin)",
    )
    p.add_argument(
        "--base-dir", type=Path, default=ROOT, help="folder whose model.py and train_mps.py are the current versions"
    )
    p.add_argument("--force", action="store_true", help="replace an existing candidate folder (one with intake.json)")
    p.add_argument(
        "--accept-like-harness",
        action="store_true",
        help="do what the harness does with a rejected block (fall back to the current file) and go on",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return intake(a)
    except IntakeError as e:
        print(f"[intake] error: {e}", file=sys.stderr, flush=True)
        return 2


def intake(a: argparse.Namespace) -> int:
    base_dir = a.base_dir.resolve()
    originals = read_originals(base_dir)
    reply_bytes, reply = read_reply(a.reply)
    reply_sha = sha256_bytes(reply_bytes)
    stem = Path(a.reply).stem if a.reply != "-" else f"reply-{reply_sha[:12]}"
    out = (a.out if a.out is not None else DEFAULT_OUT_ROOT / stem).resolve()
    check_out_dir(out, a.force)

    source = "stdin" if a.reply == "-" else a.reply
    say(f"[intake] reply {source}: {len(reply_bytes)} bytes, sha256 {reply_sha[:16]}")
    say(f"[intake] current files from {base_dir}")
    parsed = parse_reply(reply, {name: data.decode("utf-8") for name, data in originals.items()})
    for d in parsed.files.values():
        where = f" (block at reply line {d.block_line})" if d.block_line else ""
        say(f"  {d.name:13} {d.label}{where if d.status != 'rejected' else ''}")
        for note in ([where.strip(" ()")] if d.status == "rejected" and where else []) + list(d.notes):
            say(f"  {'':13}   {note}")

    if parsed.harness_ignores:
        say(
            "[intake] IGNORED: both blocks are invalid or empty, so the harness would ignore this candidate "
            "('Both train_mps.py and model.py code blocks are invalid or empty'). Nothing written."
        )
        return 1

    train_text = parsed.files["train_mps.py"].text
    checked = check_train_mps(train_text)
    if checked["error"]:
        say(f"[intake] check_constraints on train_mps.py: {checked['error']}")
    elif checked["ok"]:
        say(f"[intake] check_constraints on train_mps.py: OK (all {len(checked['rules'])} rules hold)")
    else:
        say(f"[intake] check_constraints on train_mps.py: {len(checked['violations'])} violation(s)")
        for v in checked["violations"]:
            say(f"  train_mps.py:{v['line'] if v['line'] is not None else '-'}: {v['rule']}: {v['message']}")

    rejected = [d.name for d in parsed.rejected]
    if rejected and not a.accept_like_harness:
        say(
            f"[intake] REJECTED: {', '.join(rejected)} would not reach the harness as written; fix the reply, or "
            "pass --accept-like-harness to take what the harness would do instead. Nothing written."
        )
        return 1
    for d in parsed.rejected:
        what = "the current file" if d.harness_uses == "original" else "the TRUNCATED block"
        say(f"[intake] --accept-like-harness: {d.name} is {what}, as in the harness")

    written = {
        name: originals[name] if d.harness_uses == "original" else d.text.encode("utf-8")
        for name, d in parsed.files.items()
    }
    command = benchmark_command(out)
    clean = not checked["error"] and checked["ok"]
    record = {
        "tool": "scripts/intake_reply.py",
        "created_at": datetime.now().isoformat(timespec="seconds"),
        "reply": source,
        "reply_sha256": reply_sha,
        "reply_bytes": len(reply_bytes),
        "base_dir": str(base_dir),
        "accept_like_harness": a.accept_like_harness,
        "files": {
            name: {
                **d.record(),
                "sha256": sha256_bytes(written[name]),
                "bytes": len(written[name]),
                "original_sha256": sha256_bytes(originals[name]),
            }
            for name, d in parsed.files.items()
        },
        "check_constraints": checked,
        "verdict": ("accepted-like-harness" if rejected else "accepted") if clean else "violations",
        "benchmark_command": command,
    }
    files = {**written, "intake.json": (json.dumps(record, indent=1) + "\n").encode("utf-8")}
    write_candidate(out, files, a.force)
    say(f"[intake] wrote {out}/ ({', '.join(files)})")
    if not clean:
        say("[intake] VIOLATIONS: the benchmark will refuse this candidate until train_mps.py keeps the rules.")
    say("[intake] rank it against the canonical (from the repo root):")
    say(f"  {command}")
    if base_dir != ROOT.resolve():
        say(f"[intake] --base-dir {base_dir} is not the canonical; to rank against it instead:")
        say(f"  {benchmark_command(out, str(base_dir))}")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
