"""The README's DreamTeam steps, run as written on the file layout of each driver's commit.

The README gives one bash block per DreamTeam driver (the block that runs `git checkout <commit>`). Each runs
here under `bash -e`, taken from the README text, from a stand-in for this checkout (our two files), with two
stand-ins first on PATH: `git`, whose clone makes the folder and whose checkout fills it with what that commit
has where the steps and the driver look (placeholders for DreamTeam's code, tiny data in data/shakespeare/, no
dreamteam_generations/ folder), and `python`, which records where and how it was started. Then: the driver is
started the one way it runs, our two files lie where it reads them, and a candidate made the driver's way
trains from there (tests/dreamteam_harness.py replays each driver; the facts were read from the two commits and
checked by running them with only the LLM call stubbed)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO, write_bins
from dreamteam_harness import (
    CURRENT_MAIN_FROM_BASELINE,
    FENCE,
    FILES,
    OLDER_DRIVER,
    ORIGINAL_LAYOUT_DATA_DIR,
    older_reply,
    older_sections,
    seeds_reply,
)
from test_harness import assert_finite_scores, harness_env, marked, our_sources, run_harness

DREAMTEAM_URL = "https://github.com/kevinbdsouza/DreamTeam"
SECTION = "## Using the files in the DreamTeam harness"
# Stands in for DreamTeam's model.py when the current driver imports its own files at startup.
STAND_IN_MODEL = "import torch\n\n\nclass GPTConfig:\n    pass\n\n\nclass GPT(torch.nn.Module):\n    pass\n"


@dataclasses.dataclass(frozen=True)
class Driver:
    """One commit's src/dreamteam/main.py: what it needs and does."""

    commit: str
    layout: tuple[str, ...]  # the commit's files the steps and the driver touch, besides data/shakespeare/*.bin
    cwd: str  # where it must be started, relative to the clone
    argv: tuple[str, ...]  # the one invocation that starts it there
    reads: str  # the folder, relative to cwd, it takes the starting train_mps.py and model.py from
    replay: str  # tests/dreamteam_harness.py's replay of it, run in cwd with reply files as arguments
    reply: Callable[[dict], str]  # a reply in the format its prompt asks for
    candidate: str  # the folder, relative to cwd, it writes the first candidate of reply file `{name}` to


CURRENT = Driver(
    commit="df31f78",
    layout=tuple(
        "requirements.txt src/dreamteam/.gitignore src/dreamteam/config.py src/dreamteam/main.py "
        "src/dreamteam/model.py src/dreamteam/train_mps.py src/dreamteam/utils.py "
        "src/dreamteam/prompts/savant/emmy_noether.txt".split()
    ),
    cwd="src/dreamteam",  # it reads prompts/<mode>/ and dreamteam_generations/ from there
    argv=("main.py",),
    reads="dreamteam_generations/gen_1/baseline",
    replay=CURRENT_MAIN_FROM_BASELINE,
    reply=seeds_reply,
    candidate="dreamteam_generations/gen_1/{name}",
)
OLDER = Driver(
    commit="985a9ac",
    layout=tuple(
        "docs/dreamteam_roadmap.md src/dreamteam/__init__.py src/dreamteam/config.py src/dreamteam/main.py "
        "src/dreamteam/model.py src/dreamteam/train_mps.py src/dreamteam/utils.py "
        "src/dreamteam/prompts/emmy_noether.txt".split()
    ),
    cwd=".",
    argv=("-m", "src.dreamteam.main"),  # `python src/dreamteam/main.py`: "attempted relative import ..."
    reads="src/dreamteam",
    replay=OLDER_DRIVER,
    reply=older_reply,
    candidate="results/gen_0/00_{name}",
)
DRIVERS = (CURRENT, OLDER)


def build_layout(driver: Driver, root: Path) -> Path:
    for rel in driver.layout:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name == "train_mps.py":
            path.write_text(ORIGINAL_LAYOUT_DATA_DIR)
        elif path.name == "model.py":
            path.write_text(STAND_IN_MODEL)
        else:
            path.write_text(f"# stands in for {rel} at DreamTeam {driver.commit}\n")
    write_bins(root / "data" / "shakespeare", n_train=3000, n_val=700, vocab=400)
    assert not list(root.rglob("dreamteam_generations")), "the repository has no dreamteam_generations/ folder"
    return root


# `git` and `python` for the steps: each appends what it did to $STEPS_LOG as one JSON line.
GIT = """\
import json, os, shutil, sys
from pathlib import Path

def log(**event):
    with open(os.environ["STEPS_LOG"], "a") as f:
        f.write(json.dumps(event) + "\\n")

args = sys.argv[1:]
if args[:1] == ["-C"] and len(args) > 2:
    os.chdir(args[1])
    args = args[2:]
if args[:1] == ["clone"] and len(args) in (2, 3):
    url = args[1]
    if url.removesuffix("/").removesuffix(".git").lower() != {url!r}.lower():  # GitHub ignores case
        sys.exit(f"fatal: the steps clone {{url}}, not {url}")
    folder = Path(args[2] if len(args) == 3 else "DreamTeam")
    (folder / ".git").mkdir(parents=True)
    log(git="clone", dir=str(folder.resolve()))
elif args[:1] == ["checkout"] and len(args) == 2:
    layout = Path({layouts!r}) / args[1]
    if not Path(".git").is_dir():
        sys.exit("fatal: not a git repository (run checkout inside the clone)")
    if not layout.is_dir():
        sys.exit(f"error: pathspec {{args[1]!r}} did not match: the test knows the commits {{os.listdir(layout.parent)}}")
    shutil.copytree(layout, ".", dirs_exist_ok=True)
    log(git="checkout", commit=args[1], dir=os.getcwd())
else:
    sys.exit(f"the test's git knows `clone URL [DIR]` and `checkout COMMIT` only, not: git {{' '.join(args)}}")
"""
PYTHON = """\
import json, os, sys
with open(os.environ["STEPS_LOG"], "a") as f:
    f.write(json.dumps({"python": sys.argv[1:], "cwd": os.getcwd()}) + "\\n")
"""


def readme_block(commit: str, readme: str | None = None) -> str:
    """The README's bash block that checks out `commit`, from the harness section."""
    text = (REPO / "README.md").read_text() if readme is None else readme
    assert f"\n{SECTION}\n" in text, f"README.md has no section '{SECTION}'"
    section = text.split(f"\n{SECTION}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(FENCE + r"bash\n(.*?)" + FENCE, section, flags=re.DOTALL)
    found = [b for b in blocks if re.search(rf"\bgit checkout {commit}\b", b)]
    assert len(found) == 1, (
        f"README.md, '{SECTION}': {len(found)} bash blocks run `git checkout {commit}`; give exactly one per driver"
    )
    return found[0]


@dataclasses.dataclass(frozen=True)
class Steps:
    proc: subprocess.CompletedProcess
    events: list[dict]


def run_steps(block: str, tmp_path: Path) -> Steps:
    """The block under `bash -e` from tmp_path/odegpt (our two files), the stand-ins first on PATH."""
    layouts = tmp_path / "layouts"
    for driver in DRIVERS:
        build_layout(driver, layouts / driver.commit)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for name, body in (("git", GIT.format(url=DREAMTEAM_URL, layouts=str(layouts))), ("python", PYTHON)):
        (bin_dir / name).write_text(f"#!{sys.executable}\n{body}")
        (bin_dir / name).chmod(0o755)
    checkout = tmp_path / "odegpt"
    checkout.mkdir()
    for name in FILES:
        shutil.copyfile(REPO / name, checkout / name)
    (tmp_path / "steps.sh").write_text(block)
    log = tmp_path / "steps.jsonl"
    log.touch()
    env = harness_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", STEPS_LOG=str(log))
    proc = subprocess.run(
        ["bash", "-e", str(tmp_path / "steps.sh")], cwd=checkout, env=env, capture_output=True, text=True, timeout=60
    )
    return Steps(proc, [json.loads(line) for line in log.read_text().splitlines()])


def check_steps(driver: Driver, steps: Steps) -> Path:
    """The steps ran through, started the driver the one way it runs, with our files where it reads them.
    Returns the folder it was started in."""
    out = steps.proc.stdout + steps.proc.stderr
    assert steps.proc.returncode == 0, (
        f"the README's steps for {driver.commit} stop (exit {steps.proc.returncode}):\n{out}"
    )
    clones = [e["dir"] for e in steps.events if e.get("git") == "checkout" and e["commit"] == driver.commit]
    assert len(clones) == 1, f"the steps check out {driver.commit} {len(clones)} times: {steps.events}"
    clone = Path(clones[0])
    starts = [e for e in steps.events if "python" in e]
    assert len(starts) == 1, f"the steps run python {len(starts)} times, not once: {starts}"
    cwd, argv = Path(starts[0]["cwd"]), tuple(starts[0]["python"])
    where = os.path.relpath(cwd, clone)
    assert (where, argv) == (os.path.normpath(driver.cwd), driver.argv), (
        f"the steps start the {driver.commit} driver as `python {' '.join(argv)}` in {where}/ of the clone; "
        f"it runs only as `python {' '.join(driver.argv)}` in {driver.cwd}/"
    )
    for name in FILES:
        path = cwd / driver.reads / name
        assert path.is_file(), f"the {driver.commit} driver reads {driver.reads}/{name} from {driver.cwd}/: missing"
        assert path.read_bytes() == (REPO / name).read_bytes(), f"{path} is not our {name}"
    return cwd


@pytest.mark.parametrize("driver", DRIVERS, ids=lambda d: d.commit)
def test_the_readme_steps_start_each_driver_with_our_files(driver, tmp_path):
    check_steps(driver, run_steps(readme_block(driver.commit), tmp_path))


@pytest.mark.parametrize("driver", DRIVERS, ids=lambda d: d.commit)
def test_a_candidate_made_the_drivers_way_trains_after_the_readme_steps(driver, tmp_path):
    """A reply in the driver's format that changes model.py only: the candidate lands where the driver writes
    it, trains on the clone's data/shakespeare/ (3 iterations) with its own model.py, finite scores."""
    cwd = check_steps(driver, run_steps(readme_block(driver.commit), tmp_path))
    tag = f"MODEL-OF-{driver.commit}"
    files = {"train_mps.py": "", "model.py": marked(our_sources()["model.py"], tag)}
    if driver is OLDER:
        del files["train_mps.py"]  # a file the reply leaves out is kept
    reply = tmp_path / "replies" / "edit.txt"
    reply.parent.mkdir()
    reply.write_text(driver.reply(files))
    results, out = run_harness(driver.replay, cwd, [reply])
    assert list(results) == ["edit"], out[-3000:]
    assert_finite_scores(results, out)
    assert out.count(tag) == 1, out[-3000:]
    assert f"data {(cwd / os.path.relpath('.', driver.cwd)).resolve() / 'data' / 'shakespeare'}" in out, out[-3000:]
    candidate = cwd / driver.candidate.format(name="edit")
    assert (candidate / "model.py").read_text().strip() == files["model.py"].strip()
    assert (candidate / "train_mps.py").read_bytes() == (REPO / "train_mps.py").read_bytes()


def test_the_older_driver_takes_our_files_whole_and_a_seeds_reply_as_no_files(tmp_path):
    """No line of ours ends in `.py:` (the older driver would cut the file there), so the older format carries
    each file byte for byte; a seeds'-format reply has no section: one warning, and the best files so far
    (the first agent's here) train again under the second agent's name."""
    sources = our_sources()
    for name, code in sources.items():
        cut = [i + 1 for i, line in enumerate(code.splitlines()) if line.strip().endswith(".py:")]
        assert not cut, f"{name} lines {cut} end in `.py:`: the older driver starts a new file there"
    assert older_sections(older_reply(sources)) == sources
    seeds = seeds_reply({"train_mps.py": "", "model.py": marked(sources["model.py"], "MODEL-OF-seeds")})
    assert older_sections(seeds) == {}

    cwd = check_steps(OLDER, run_steps(readme_block(OLDER.commit), tmp_path))
    first = tmp_path / "a_first.txt"
    first.write_text(older_reply({"model.py": marked(sources["model.py"], "MODEL-OF-first")}))
    second = tmp_path / "b_seeds.txt"
    second.write_text(seeds)
    results, out = run_harness(OLDER.replay, cwd, [first, second])
    assert_finite_scores(results, out)
    assert out.count("returned no files") == 1 and "Agent b_seeds returned no files" in out, out[-3000:]
    assert out.count("MODEL-OF-first") == 2 and "MODEL-OF-seeds" not in out, out[-3000:]
    trained = cwd / "results" / "gen_0" / "01_b_seeds" / "model.py"
    assert trained.read_text() == (cwd / "results" / "gen_0" / "00_a_first" / "model.py").read_text()


def test_the_steps_check_can_fail(tmp_path):
    """Without the `mkdir -p` (the README before issue #34) the copy stops the steps; the older driver started
    as a script is refused."""
    block = readme_block(CURRENT.commit)
    without_mkdir = "".join(line for line in block.splitlines(True) if not line.startswith("mkdir"))
    assert without_mkdir != block
    steps = run_steps(without_mkdir, tmp_path / "current")
    assert steps.proc.returncode != 0 and "No such file or directory" in steps.proc.stderr, steps.proc.stderr
    with pytest.raises(AssertionError, match="stop"):
        check_steps(CURRENT, steps)

    block = readme_block(OLDER.commit)
    as_script = block.replace("python -m src.dreamteam.main", "python src/dreamteam/main.py")
    assert as_script != block
    with pytest.raises(AssertionError, match="runs only as `python -m src.dreamteam.main`"):
        check_steps(OLDER, run_steps(as_script, tmp_path / "older"))
    with pytest.raises(AssertionError, match="0 bash blocks run `git checkout 985a9ac`"):
        readme_block(OLDER.commit, readme=f"# odegpt\n\n{SECTION}\n\nCopy the files over its starting files.\n")
