"""Per-sample steering diagnostics, written as JSONL next to lmms-eval's output files.

With ``diagnostics=DIR`` every steered sample gets one line: task, doc_id, mc2_id, category, target,
fold (and whether it was steered in-sample), C_V, C_T, r_v, the anchor and gamma (mean_mcs), alpha,
the effective strength, and the norms of the vector and of the applied shift. One file per run and
process: ``amps_diagnostics_<time>_<settings hash>_rank<r>.jsonl``, whose first line is the run's
settings.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class DiagnosticsWriter:
    path: Path

    @classmethod
    def for_run(cls, settings, rank: int) -> "DiagnosticsWriter":
        config = settings.to_dict()
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:10]
        folder = Path(settings.diagnostics)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"amps_diagnostics_{time.strftime('%Y%m%d_%H%M%S')}_{digest}_rank{rank}.jsonl"
        with path.open("w") as handle:
            handle.write(json.dumps({"settings": config}, default=str) + "\n")
        return cls(path)

    def write(self, rows: list[dict]) -> None:
        with self.path.open("a") as handle:
            for row in rows:
                handle.write(json.dumps(row, default=str) + "\n")
