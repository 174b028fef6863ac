"""The Modality Contribution Score (AMPS Algorithm 1): a diagnostic, not steering.

* :mod:`amps_eval.mcs.score` - the score itself (`compute_mcs`, `MCSSettings`, `MCSResult`);
* :mod:`amps_eval.mcs.kv_cache` - the model plumbing it needs: prefill, positions (from the model's
  family, `amps_eval.families`) and single-token passes against a fresh cache;
* :mod:`amps_eval.mcs.run` - ``amps-eval mcs``: the score of every MC2 item, written as JSONL.
"""
