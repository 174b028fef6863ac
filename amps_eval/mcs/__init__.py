"""The Modality Contribution Score (AMPS Algorithm 1): a diagnostic, not steering.

* :mod:`amps_eval.mcs.score` - the estimator (`compute_mcs`, `MCSResult`; its docstring records the
  decisions the paper leaves open);
* :mod:`amps_eval.mcs.settings` - `MCSSettings` and `MCS_KEYS` (the fields that change a value);
* :mod:`amps_eval.mcs.stats` - the pure statistics (score, ratio, standard errors);
* :mod:`amps_eval.mcs.seeding` - how each sample's noise is seeded;
* :mod:`amps_eval.mcs.noise` - the noise designs (`MCSSettings.noise_design`): Gaussian or orthogonal draws;
* :mod:`amps_eval.mcs.memory` - how many perturbed copies one pass may hold;
* :mod:`amps_eval.mcs.copies` - the perturbed cache copies and one forward + backward over them;
* :mod:`amps_eval.mcs.item` - the MCS of MC2 items: item cache lookup, else compute, then store;
* :mod:`amps_eval.mcs.kv_cache` - the model plumbing it needs: prefill, positions (from the model's
  family, `amps_eval.families`) and single-token passes against a fresh cache.

The ``amps-eval mcs`` command (every MC2 item's score as JSONL) is `amps_eval.mcs_run`.
"""
