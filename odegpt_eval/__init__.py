"""odegpt's evaluation tooling: candidates trained and scored by a runner that trusts nothing they say.

Modules, one job each:
  sandbox      where candidate code runs (bubblewrap on Linux, or none, said loudly)
  children/    the two programs that run inside a sandbox: the training child and the scoring child (stdlib,
               numpy and torch only; nothing of the runner's)
  scoring      the prefix protocol's runner side: calls, the cross-entropy from returned logits, the audit
  signing      run records the runner wrote and can verify
"""
