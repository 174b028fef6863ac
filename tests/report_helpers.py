"""Reading the report's GitHub tables back in tests."""

from __future__ import annotations


def table_rows(text: str, block: str, table: str | None = None) -> dict[str, list[str]]:
    """label -> cells of the GitHub table under the first block heading containing ``block`` (after
    the first "### " heading containing ``table``, when given)."""
    lines = text.splitlines()
    start = 0
    if table is not None:
        start = next(i for i, line in enumerate(lines) if line.startswith("### ") and table in line)
    start = next(i for i in range(start, len(lines)) if lines[i].startswith("**") and block in lines[i])
    header = [c.strip() for c in lines[start + 2].strip("|").split("|")]
    keep = len(header) - 1 - (header[-1] == "log-odds")  # the share columns (log-odds: logodds_column)
    rows = {}
    for line in lines[start + 4:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:1 + keep]
    return rows


def logodds_column(text: str, block: str, table: str | None = None) -> dict[str, str]:
    """label -> the log-odds cell of the same table as `table_rows`."""
    lines = text.splitlines()
    start = 0
    if table is not None:
        start = next(i for i, line in enumerate(lines) if line.startswith("### ") and table in line)
    start = next(i for i in range(start, len(lines)) if lines[i].startswith("**") and block in lines[i])
    header = [c.strip() for c in lines[start + 2].strip("|").split("|")]
    assert header[-1] == "log-odds", header
    out = {}
    for line in lines[start + 4:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = cells[-1]
    return out
