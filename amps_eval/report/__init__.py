"""Reports over lmms-eval result folders: the AMPS paper's tables and figures, a leaderboard, sweeps.

Layers, so that every number can be checked without rendering anything:

* ``runs``: find and parse ``*_results.json`` + ``*_samples_<task>.jsonl`` (problems are collected,
  never raised, so one bad file does not hide the others);
* ``cells``: per-(run, target, column) numbers, scored from the samples with ``mc2.metrics.score``;
* ``select``: which run fills which cell (newest wins) and which alpha a steered row shows;
* ``tables`` / ``render``: Tables 1-3 as data, then as github / markdown / latex / csv text;
* ``paper``: the published numbers on file (``paper_numbers.json``), with their sources;
* ``figures``, ``mcs_data``, ``leaderboard``, ``sweep``, ``build`` (the ``amps-eval report`` command).
"""

from amps_eval.methods.registry import LABELS as METHOD_LABELS  # noqa: E402  (light: no torch)
from amps_eval.methods.registry import STEERING_METHODS as STEERED  # noqa: E402

__all__ = ["METHOD_LABELS", "STEERED"]
