"""Judging a finished run: the trusted figures into its record, and its violations, from the findings the runner
saved (returned.json). Also used to re-judge recorded runs by today's rules (merge.rejudge)."""

from __future__ import annotations

import math

from .scoring import FLOOR_REPEATS
from .specs import FIXED, fitness

# A returned best_vloss is a violation when it is both more than vloss_slack below the trusted test loss and more
# than VLOSS_MARGIN below the runner's batch floor (batch_floor). best_vloss is the min of ~101 single-batch losses
# on the candidate's half, and how far that sits below the half's whole-split loss depends on the text: 0.3 to 0.7
# nats on most runs, 0.95 to 1.11 on tinyshakespeare's seed 1, whose evaluation batches meet an easy passage (the
# slack alone flagged two honest runs there). So the runner also measures the floor on the trained model itself:
# the min over FLOOR_REPEATS times as many random batches as the run evaluates, from its own per-token losses.
# VLOSS_MARGIN covers what that leaves out: windows at random offsets whose per-token losses come from the aligned
# windows' contexts. The slack (VLOSS_SLACK plus how much harder the held-out half is than the candidate's, as the
# Kneser-Ney reference scores the two) covers a model that was better earlier in its run than at its end.
VLOSS_MARGIN = 0.15


VLOSS_SLACK = 1.0


# A returned elapsed_min below ELAPSED_SLACK_REL * (the runner's clock up to the last optimizer step) - ELAPSED_SLACK_MIN
# is a violation: the returned clock must cover the training it did (10% and 6 s for jitter and the clock's start).
ELAPSED_SLACK_REL, ELAPSED_SLACK_MIN = 0.9, 0.1


def vloss_slack(references: dict | None) -> float:
    """How far below the trusted test loss a returned best_vloss may be: VLOSS_SLACK, plus how much harder the
    held-out test split is than the candidate's part of val as the Kneser-Ney reference (fitted on train.bin alone,
    its best order) scores the two. The candidate measures its best_vloss on its part, the runner on the other."""
    kn = (references or {}).get("kneser_ney") or {}
    test, mine = kn.get("heldout_test"), kn.get("candidate_val")
    if not test or not mine:
        return VLOSS_SLACK
    return VLOSS_SLACK + max(0.0, min(test.values()) - min(mine.values()))


def plain(value):
    """A recorded number back to a float ('nan', 'inf' strings included); None stays None."""
    return None if value is None else float(value)


def judge_run(
    record: dict, returned: dict, expected_iters: int, layout: str = "module", slack: float = VLOSS_SLACK
) -> None:
    """The trusted figures and the violations of a finished run, from the subprocess's findings, into `record`.
    `layout` "train" (the DreamTeam original's) also accepts a 0-d floating torch.Tensor as best_vloss."""
    violations = record["violations"]
    allowed = {"best_vloss": {"builtins.float"}, "elapsed_min": {"builtins.float"}}
    if layout == "train":
        allowed["best_vloss"].add("torch.Tensor")
    monitor, trusted = returned.get("monitor") or {}, returned.get("trusted") or {}
    values = returned.get("returned")
    own = [None, None]
    if values is None:
        violations.append(f"train() returned {returned.get('returned_repr')}, not a pair (best_vloss, elapsed_min)")
    else:
        for i, (name, v) in enumerate(zip(("best_vloss", "elapsed_min"), values)):
            x = plain(v["value"])
            if v["type"] not in allowed[name] or x is None:
                violations.append(f"returned {name} is a {v['type']}, not a float")
            elif not math.isfinite(x):
                violations.append(f"returned {name} is {x}: not finite")
            elif x < 0:
                violations.append(f"returned {name} is {x}: negative")
            else:
                own[i] = x
    test_loss = plain(trusted.get("test_loss"))
    record.update(
        best_vloss=own[0],
        elapsed_min=own[1],
        fitness=fitness(*own) if None not in own else None,
        returned_repr=returned.get("returned_repr"),
        trusted_test_loss=test_loss if test_loss is not None and math.isfinite(test_loss) else None,
        trusted_elapsed_min=trusted.get("elapsed_min"),
        trusted_train_min=trusted.get("train_min"),
        trusted_scoring_s=trusted.get("scoring_s"),
        trusted_candidate_val_loss=trusted.get("candidate_val_loss"),
        trusted_batch_floor=trusted.get("batch_floor"),
        **{  # the sandboxed runner's (trusted-v2) clock: the sandbox's span, train()'s within it, scoring over budget
            f"trusted_{k}": trusted[k]
            for k in ("sandbox_min", "train_span_min", "outside_train_min", "scoring_charged_s")
            if k in trusted
        },
        optimizer_steps=monitor.get("optimizer_steps"),
        training_forwards=monitor.get("training_forwards"),
        training_batch_shapes=monitor.get("training_batch_shapes"),
        scored_module=monitor.get("scored_module"),
        monitor=monitor,
    )
    record["trusted_fitness"] = (
        fitness(record["trusted_test_loss"], record["trusted_elapsed_min"])
        if record["trusted_test_loss"] is not None and record["trusted_elapsed_min"] is not None
        else None
    )
    evidence = returned.get("evidence") or {}  # runs of the sandboxed runner (trusted-v2) only
    violations += evidence.get("problems") or []
    if evidence.get("export_error"):
        violations.append(f"the model could not be exported for scoring: {evidence['export_error']}")
    if not monitor.get("model_found"):
        violations.append("no model found: no module was called in training mode on a (B, T) batch of token ids")
        return
    if trusted.get("scoring_error"):
        violations.append(f"the runner could not score the model: {trusted['scoring_error']}")
    elif record["trusted_test_loss"] is None:
        violations.append(f"trusted test loss is {trusted.get('test_loss')}: not finite")
    steps = monitor.get("optimizer_steps")
    if steps != expected_iters:
        violations.append(f"{steps} optimizer steps, not the {expected_iters} iterations of the run")
    if (monitor.get("training_forwards") or 0) < expected_iters:
        violations.append(f"{monitor.get('training_forwards')} training forwards for {expected_iters} iterations")
    want = f"{FIXED['batch_size']}x{FIXED['block_size']}"
    other = {s: n for s, n in (monitor.get("training_batch_shapes") or {}).items() if s != want}
    if other:
        violations.append(f"training batches of shape {other} (shape: count), not {want}")
    if (monitor.get("modules_trained") or 0) > 1:
        violations.append(f"{monitor['modules_trained']} models were trained, not one")
    floor = plain(trusted.get("batch_floor"))
    floor = floor if floor is not None and math.isfinite(floor) else None
    if own[0] is not None and record["trusted_test_loss"] is not None:
        below_test = own[0] < record["trusted_test_loss"] - slack
        if below_test and (floor is None or own[0] < floor - VLOSS_MARGIN):
            reach = (
                ""
                if floor is None
                else f", and more than {VLOSS_MARGIN:g} below {floor:.4f}, the lowest loss the runner finds for one "
                f"evaluation batch of the trained model on the candidate's val (min over {FLOOR_REPEATS} x "
                f"{record.get('heldout', {}).get('evaluations', '?')} random batches)"
            )
            violations.append(
                f"returned best_vloss {own[0]:.4f} is more than {slack:.3f} nats below the trusted test loss "
                f"{record['trusted_test_loss']:.4f}{reach}"
            )
    audit = trusted.get("audit")
    if audit and not audit.get("max_abs_diff", math.inf) <= audit.get("tolerance", 0.0):
        violations.append(
            f"the scoring depends on more than each row's own prefix: the same prefixes asked again "
            f"({audit.get('call')}) gave log-probabilities {audit.get('max_abs_diff'):.3g} nats apart (tolerance "
            f"{audit.get('tolerance'):g}): the model keeps state between scoring calls or reads other rows"
        )
    updates = (monitor.get("updates") or {}).get("worst")
    if updates:
        abs_slack, rel_slack = monitor["updates"].get("slack") or (0, 0.0)
        if updates["steps_lower_bound"] > expected_iters * (1 + rel_slack) + abs_slack:
            if updates.get("basis") == "values":  # what a fused optimizer's writes leave: the values, not versions
                seen = (
                    f"parameter {updates['param']} changed in {updates['counted_steps']} optimizer steps the hooks "
                    f"counted and {updates['changed_between_steps']} times between them"
                )
            else:
                seen = (
                    f"parameter {updates['param']} was written in place {updates['writes']} times, "
                    f"{updates['writes_per_step']:g} per optimizer step the hooks counted ({updates['counted_steps']})"
                )
            violations.append(
                f"{seen}: at least {updates['steps_lower_bound']} optimizer steps for {expected_iters} iterations "
                "(steps the hooks did not see, or a second optimizer)"
            )
    other = monitor.get("other_trained") or {}
    if other.get("parameters"):
        violations.append(
            f"{other['parameters']} parameter(s) outside the trained and the scored model were updated in place up "
            f"to {other['max_updates']} times: another model was trained (out of the hooks' sight)"
        )
    train_min = record["trusted_train_min"]
    if own[1] is not None and train_min is not None and own[1] < ELAPSED_SLACK_REL * train_min - ELAPSED_SLACK_MIN:
        violations.append(
            f"returned elapsed_min {own[1]:.3f} is below the runner's clock ({train_min:.3f} min to the last "
            f"optimizer step; allowed down to {ELAPSED_SLACK_REL:g} x that - {ELAPSED_SLACK_MIN:g} min)"
        )
