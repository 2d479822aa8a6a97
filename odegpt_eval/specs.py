"""What is evaluated: the harness contract's fixed values, the configurations (baseline, canonical, canonical:FIELD=
VALUE,..., candidate folders) and the recipes they mean, the files each trains with, and the ranked formula."""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import typing
from pathlib import Path

from . import constraints
from .files import slug

ROOT = Path(__file__).resolve().parents[1]


SOURCE_FILES = ("model.py", "train_mps.py")


TIME_WEIGHT = 0.01  # fitness = loss + TIME_WEIGHT * minutes, for the trusted and the candidate's own figures


BUILTIN_SOURCE = "canonical"  # the snapshot folder shared by baseline, canonical and canonical:...


# The seeds' starting point, the one place its values live: plain pre-LN GPT (euler, one step, lie
# splitting), nanoGPT's init with tied embeddings, vocab 50304, no bias, dropout 0; AdamW lr 3e-4, betas
# (0.9, 0.95), weight decay 0.1 on >= 2-D parameters, clipping at 1.0, a constant learning rate, no warmup,
# no EMA. Every Recipe field but the seed is pinned (a test checks), so a change of the canonical defaults
# cannot move the baseline; decay_frac is unused under constant. levers.py's fields are absent: off.
BASELINE_RECIPE = dict(
    vocab_size=50304,
    bias=False,
    dropout=0.0,
    solver="euler",
    steps_per_layer=1,
    splitting="lie",
    zero_init_proj=False,
    shortlist=False,
    kinetic_energy=0.0,
    jacobian_frobenius=0.0,
    fused_optimizer=False,  # nanoGPT's configure_optimizers: AdamW's per-tensor loop on CPU and MPS
    learning_rate=3e-4,
    min_lr=3e-4,
    schedule="constant",
    warmup_iters=0,
    decay_frac=0.2,
    weight_decay=0.1,
    beta1=0.9,
    beta2=0.95,
    grad_clip=1.0,
    ema_decay=0.0,
    random_steps=0,
    eval_steps=0,
)


# The harness contract's fixed values that the runner checks or relies on at run time (scripts/check_constraints.py
# checks the source; a test compares these with train_mps's fixed block).
FIXED = {"batch_size": 8, "block_size": 64, "max_iters": 10001, "eval_interval": 100}


class BenchmarkError(RuntimeError):
    """A usage or input error found before anything runs; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class Config:
    label: str  # as given on the command line
    kind: str  # "builtin" | "folder"
    origin: str  # where the two files come from
    snapshot: str  # name of the copy under <out>/sources/
    overrides: dict | None  # Recipe fields for train(Recipe(**overrides)); None: train() with no arguments


def canonical_train_mps():
    """The repo's train_mps module (for Recipe's fields and the fixed block); importing it has no side effects."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import train_mps

    return train_mps


# Built-ins may set the fields of levers.py (canonical:ngram_distill=0.5,...), the off-by-default levers that live
# beside the two files (which never import it). Such a built-in trains from its own snapshot, the two files and
# levers.py, as levers.train(levers.LeverRecipe(**overrides)); every other configuration runs as before.
LEVERS_FILE = "levers.py"
LEVERS_SOURCE = "canonical-levers"  # the snapshot folder of the built-ins that set a lever


def builtin_recipe_class():
    """The class built-in specs are parsed against: levers.LeverRecipe, train_mps.Recipe and the levers' fields."""
    canonical_train_mps()
    import levers

    return levers.LeverRecipe


def builtin_snapshot(overrides: dict | None) -> str:
    """BUILTIN_SOURCE, or LEVERS_SOURCE where the overrides set a field train_mps.Recipe lacks (a lever's)."""
    plain = {f.name for f in dataclasses.fields(canonical_train_mps().Recipe)}
    return LEVERS_SOURCE if set(overrides or {}) - plain else BUILTIN_SOURCE


def source_files(config: Config) -> tuple[str, ...]:
    """The files a configuration trains with: model.py and train_mps.py, and levers.py for a lever's built-in."""
    return (*SOURCE_FILES, LEVERS_FILE) if config.snapshot == LEVERS_SOURCE else SOURCE_FILES


def parse_value(field: str, text: str, kind):
    """A Recipe field's value from text, by the field's type."""
    try:
        if kind is bool:
            low = text.strip().lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is str:
            return text
    except ValueError as e:
        raise BenchmarkError(f"Recipe field {field!r} is {kind.__name__}; cannot parse {text!r} ({e})") from None
    raise BenchmarkError(f"Recipe field {field!r} has type {kind!r}, which the command line cannot express")


def parse_overrides(text: str, recipe_cls) -> dict:
    """`field=value,field=value` -> {field: typed value}, validated against recipe_cls's fields."""
    types = typing.get_type_hints(recipe_cls)
    valid = [f.name for f in dataclasses.fields(recipe_cls) if f.name != "seed"]
    out: dict = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BenchmarkError(f"expected FIELD=VALUE, got {item!r} in {text!r}")
        if key == "seed":
            raise BenchmarkError("the seed is not a recipe override; pass the seeds with --seeds")
        if key not in types:
            raise BenchmarkError(f"unknown Recipe field {key!r} in {text!r}; valid fields: {', '.join(valid)}")
        if key in out:
            raise BenchmarkError(f"Recipe field {key!r} given twice in {text!r}")
        out[key] = parse_value(key, value.strip(), types[key])
    return out


def parse_config(spec: str, recipe_cls) -> Config:
    """A --configs entry: baseline, canonical, canonical:field=value,... or a candidate folder."""
    canonical = str(ROOT)
    if spec == "baseline":
        fields = {f.name for f in dataclasses.fields(recipe_cls)}
        missing = sorted(set(BASELINE_RECIPE) - fields)
        if missing:
            raise BenchmarkError(f"BASELINE_RECIPE names fields Recipe no longer has: {', '.join(missing)}")
        return Config(spec, "builtin", canonical, BUILTIN_SOURCE, dict(BASELINE_RECIPE))
    if spec == "canonical":
        return Config(spec, "builtin", canonical, BUILTIN_SOURCE, None)
    if spec.startswith("canonical:"):
        overrides = parse_overrides(spec[len("canonical:") :], recipe_cls)
        return Config(spec, "builtin", canonical, builtin_snapshot(overrides), overrides)
    folder = Path(spec)
    if not folder.is_dir():
        raise BenchmarkError(
            f"configuration {spec!r} is neither a built-in (baseline, canonical, canonical:FIELD=VALUE,...) "
            "nor a folder"
        )
    missing = [f for f in SOURCE_FILES if not (folder / f).is_file()]
    if missing:
        raise BenchmarkError(f"candidate folder {spec!r} lacks {', '.join(missing)}")
    return Config(spec, "folder", str(folder.resolve()), f"folder-{slug(spec)}", None)


def recipe_drift(label: str, recorded: dict, recipe_cls) -> dict:
    """Where a built-in label no longer means the Recipe its run recorded (metrics' `recipe`), e.g. after a
    default changed: {field: (today's value, recorded value)}. Fields the run predates are skipped; {} for
    candidate folders and names that are not built-ins (nothing to compare)."""
    if label != "baseline" and label != "canonical" and not label.startswith("canonical:"):
        return {}
    overrides = parse_config(label, recipe_cls).overrides or {}
    today = dataclasses.asdict(recipe_cls(**{**overrides, "seed": recorded.get("seed", 0)}))
    return {k: (today[k], v) for k, v in recorded.items() if k in today and today[k] != v}


def check_train_mps(source: str, filename: str) -> list[str]:
    """scripts/check_constraints.py on one train_mps.py: the violations as `path:line: RULE: message`."""
    try:
        violations = constraints.check(source, filename=filename)
    except SyntaxError as e:
        return [f"{filename}:{e.lineno}: syntax error: {e.msg}"]
    return [f"{filename}:{v.line if v.line is not None else '-'}: {v.rule}: {v.message}" for v in violations]


def source_texts(config: Config, out: Path, resume: bool) -> tuple[dict[str, bytes], bool]:
    """The two files a configuration trains with: on --resume the saved copy if there is one, else the origin."""
    snap = out / "sources" / config.snapshot
    use_snapshot = resume and all((snap / f).is_file() for f in source_files(config))
    folder = snap if use_snapshot else Path(config.origin)
    return {f: (folder / f).read_bytes() for f in source_files(config)}, use_snapshot


def sources_sha256(texts: dict[str, bytes]) -> dict[str, str]:
    """A configuration's files (name -> bytes) as the sha256 each run records."""
    return {f: hashlib.sha256(d).hexdigest() for f, d in texts.items()}


def fitness(best_vloss: float, elapsed_min: float) -> float:
    return best_vloss + TIME_WEIGHT * elapsed_min
