"""``python -m entropy_ops bench``: the SPEC §4 benchmark, side by side in one run.

One small module per job: ``cases`` (what is measured, bytes and exps), ``baselines`` (every
implementation behind one calling convention), ``timing`` (medians, copy bandwidth),
``machine`` (device name, header), ``runner`` (one case: reference, timings, errors),
``table`` (printing, CSV), ``summary`` (speed-ups against the SPEC §4 targets), ``tokens`` and
``token_eager`` (the token-level ops of SPEC §3.2 vs the eager way of the papers' code), ``cli``.
Nothing here imports from the repository outside the package, so it runs from a wheel.
"""
