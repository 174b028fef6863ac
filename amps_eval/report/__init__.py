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

METHOD_LABELS = {
    "none": "MLLM-only",
    "inst": "Inst Design",
    "cot": "CoT",
    "fewshot": "Few shot",
    "mean": "Mean steering",
    "mean_mcs": "Mean+MCS",
    "l2s": "L2S",
    "amps": "AMPS",
}
"""Table 1's row labels, in its row order; other methods follow in alphabetical order."""

STEERED = ("mean", "mean_mcs", "l2s", "amps")
"""Methods whose strength alpha is a setting (the prompt methods ignore it)."""
