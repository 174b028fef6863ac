"""``known_answer.md`` and ``known_answer.json`` from :func:`amps_eval.known_answer.analysis.analyse_study`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from amps_eval.methods.registry import LABELS

MD_NAME = "known_answer.md"
JSON_NAME = "known_answer.json"


def _num(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _ci(entry: dict | None, key: str = "spearman", digits: int = 2) -> str:
    if not entry:
        return "-"
    lo, hi = entry["ci95"]
    return f"{_num(entry[key], digits)} [{_num(lo, digits)}, {_num(hi, digits)}]"


def render(result: dict[str, Any]) -> str:
    lines = ["# Known-answer tests (graded organism)", "",
             f"Data: `{result['data']}` ({result['n_items']} items with a planted p = `planted_p_vision`). "
             f"Intervals: 95% bootstrap over items ({result['n_boot']} resamples, seed {result['seed']}). "
             "Numbers as measured; see docs/known_answer.md for what each test asks.", ""]
    for model, tests in result["models"].items():
        lines += [f"## {Path(model).name}", ""]
        lines += ["### 1. MCS validity: Spearman(r_v, planted p)", ""]
        validity = tests["mcs_validity"]
        if not validity:
            lines += ["No MCS of this model was found in the study's mcs/ folder.", ""]
        else:
            lines += ["| scope | n | Spearman [95% CI] |", "|---|---:|---|"]
            for scope, entry in validity.items():
                lines.append(f"| {scope} | {entry['n']} | {_ci(entry)} |")
            lines.append("")
        lines += ["### 2. AMPS premise, with an oracle (matched effective strength)", ""]
        for target, block in tests["premise"].items():
            if "note" in block:
                lines += [f"Toward {target}: {block['note']}.", ""]
                continue
            for point in block["points"]:
                lines += [f"Toward **{target}** at effective strength {point['strength']:.3g} "
                          f"({point['fraction_of_common_max']:g} x the largest strength every method reaches):", "",
                          "| method | target share % | toward-target log-odds | n | training seeds |",
                          "|---|---:|---:|---:|---:|"]
                for method, m in point["methods"].items():
                    lines.append(f"| {LABELS.get(method, method)} | {_num(m['target_share_pct'], 1)} | "
                                 f"{_num(m['toward_logodds'])} | {m['n']} | {m.get('seeds', 1)} |")
                lines += ["", "| difference (paired) | target share, points [95% CI] | toward log-odds [95% CI] |",
                          "|---|---|---|"]
                for d in point["differences"]:
                    lines.append(f"| {d['a']} - {d['b']} | {_ci(d['target_share_pct'], 'difference', 1)} | "
                                 f"{_ci(d['toward_logodds'], 'difference')} |")
                lines.append("")
        lines += ["### 3. Susceptibility", "",
                  "Per item: the slope of the toward-target `image_logodds` per unit of effective strength, and "
                  "the flip point (censored items ranked above every flip). Spearman [95% CI] with each predictor. "
                  "A trained method's row is its first training seed's sweep (section 2 averages the seeds).", "",
                  "| method | target | n | flipped | mean slope | predictor | slope rho | flip-point rho |",
                  "|---|---|---:|---:|---:|---|---|---|"]
        for row in tests["susceptibility"]:
            for k, name in enumerate(row["slope"]):
                head = (f"| {LABELS.get(row['method'], row['method'])} | {row['target']} | {row['n']} | {row['flipped']} | "
                        f"{_num(row['mean_slope'])} " if k == 0 else "| | | | | ")
                lines.append(f"{head}| {name} | {_ci(row['slope'][name])} | {_ci(row['flip'][name])} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_known_answer(out: Path, result: dict[str, Any]) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / JSON_NAME).write_text(json.dumps(_finite(result), indent=2, allow_nan=False, default=str) + "\n",
                                 encoding="utf-8")
    (out / MD_NAME).write_text(render(result), encoding="utf-8")
    return [out / MD_NAME, out / JSON_NAME]


def _finite(value):
    """NaN and infinities as null (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
