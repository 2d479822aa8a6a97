"""odegpt's evaluation tooling: candidates trained and scored by a runner that trusts nothing they say.

In the shape of an Inspect evaluation (a task, a solver, a scorer and a sandbox that is a plug-in), one job a module;
imports only go down this list, never in a circle (tests/test_package.py checks):

  files        atomic writes, sha256, records, folder names
  constraints  the static checker of a candidate's train_mps.py and model.py (scripts/check_constraints.py)
  specs        what is evaluated: the fixed block, the configurations and recipes, the ranked formula
  splits       the held-out split and the runner-made data folder a candidate sees
  layout       DreamTeam's original layout, adapted to run here
  kneser_ney   the count-based reference (scripts/kneser_ney.py); references: its row in every report
  environment  what a benchmark records about the machine
  sandbox      where candidate code runs (bubblewrap on Linux, or none, said loudly)
  children/    the programs that run inside a sandbox: the training child and the scoring child (stdlib, numpy and
               torch only; nothing of the runner's)
  training     the training child run in a sandbox, the runner's clock around it, its evidence channel
  scoring      the prefix protocol's runner side: calls, the cross-entropy from returned logits, the audit
  signing      run records the runner wrote and can verify
  judge        the violations of a finished run, from what the runner found
  runs         one run: prepared and recorded by the driver, its training phase run by an executor
  executors    where training phases run: `local` (a pool of this machine's processes) or `ray` (a cluster)
  summary      per configuration over seeds, paired against the baseline
  report       benchmark.md and benchmark.png from the JSON alone
  merge        one report from several benchmark folders, re-judged
  benchmark    the command (scripts/benchmark.py): plan, resume, executors, the report
  rerank       a recorded DreamTeam generation re-ranked by trusted figures (scripts/rerank_generation.py)
  intake       an LLM's reply made into a candidate folder as the harness would (scripts/intake_reply.py)
"""
