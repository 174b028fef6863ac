"""The leaderboard on a hand-made results folder whose every expected number is known: one row per
(model, method) with both targets, alpha chosen on held-out halves, ISO UTC dates, relative links,
a self-contained page; and, in headless Chromium, sorting, filtering, expanding, and no request
leaving the page."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

from amps_eval.report.leaderboard import iso_utc, leaderboard_rows, nice_ticks, short_data, to_markdown, write_leaderboard
from amps_eval.report.runs import DataId, discover
from amps_eval.report.select import build_index

N = 8  # items per task
CATS = ("color", "counting")
TASKS = {"vision": "mc2_visual", "text": "mc2_text"}
ALPHA = "org/alpha-vl"
BETA = "org/beta-vl"


# ---- a results folder ---------------------------------------------------------------------------
def _follows(rule: str, target: str, i: int) -> str:
    """Which option item ``i``'s answer follows under a named rule (see `make_results`)."""
    other = "text" if target == "vision" else "vision"
    return {"half": target if i < N // 2 else other,
            "all": target,
            "collapse_quarter": "others" if i % 4 == 0 else target}[rule]


def write_run(folder: Path, stamp: str, args: dict, rules: dict[str, str], strength: float | None = None,
              diagnostics: Path | None = None) -> Path:
    """One lmms-eval run (results + samples files of mc2_visual and mc2_text); with ``strength``, a
    diagnostics file that gives every item that effective strength."""
    folder.mkdir(parents=True, exist_ok=True)
    if diagnostics is not None:
        args = {**args, "diagnostics": str(diagnostics)}
    results = {}
    for target, task in TASKS.items():
        records = []
        for i in range(N):
            follows = _follows(rules[target], target, i)
            records.append({"mc2_id": i, "category": CATS[i % 2], "target": target, "order": "vision_first",
                            "follows": follows, "score": int(follows == target)})
        (folder / f"{stamp}_samples_{task}.jsonl").write_text(
            "".join(json.dumps({"doc_id": n, "target_acc": r}) + "\n" for n, r in enumerate(records)))
        results[task] = {"target_acc,none": sum(r["score"] for r in records) / N,
                         "others_rate,none": sum(r["follows"] == "others" for r in records) / N}
    path = folder / f"{stamp}_results.json"
    path.write_text(json.dumps({
        "results": results, "config": {"model": "amps_qwen", "model_args": ",".join(f"{k}={v}" for k, v in args.items())},
        "date": stamp, "n-samples": {task: {"original": N, "effective": N} for task in TASKS.values()}}))
    if strength is not None:
        diagnostics.mkdir(parents=True, exist_ok=True)
        header = {k: (float(v) if k == "alpha" else v) for k, v in args.items()}
        lines = [{"settings": header}] + [{"task": task, "doc_id": i, "mc2_id": i, "relative_shift": strength}
                                          for task in TASKS.values() for i in range(N)]
        (diagnostics / f"amps_diagnostics_{stamp}_x_rank0.jsonl").write_text(
            "".join(json.dumps(x) + "\n" for x in lines))
    return path


def make_results(root: Path) -> Path:
    """Model alpha-vl: none (half), inst (all), mean swept at alpha 0, 1, 2 (vision is best at 1:
    alpha 2 collapses a quarter; text is best at 2), l2s at alpha 0 only (the unsteered model: no
    row), amps at alpha 2 only; model beta-vl: none. Stamps are lmms-eval's (UTC+8)."""
    runs = root / "runs"
    diag = root / "diagnostics"
    write_run(runs / "alpha" / "none", "20260101_080000", {"pretrained": ALPHA, "method": "none"},
              {"vision": "half", "text": "half"})
    write_run(runs / "alpha" / "inst", "20260101_080100", {"pretrained": ALPHA, "method": "inst"},
              {"vision": "all", "text": "all"})
    sweep = {0: ({"vision": "half", "text": "half"}, 0.0), 1: ({"vision": "all", "text": "half"}, 0.1),
             2: ({"vision": "collapse_quarter", "text": "all"}, 0.2)}
    for n, (alpha, (rules, strength)) in enumerate(sweep.items()):
        write_run(runs / "alpha" / "sweep_mean" / f"alpha_{alpha}", f"20260101_08020{n}",
                  {"pretrained": ALPHA, "method": "mean", "steering": "mean.safetensors", "alpha": alpha}, rules,
                  strength, diag / "mean")
    write_run(runs / "alpha" / "sweep_l2s" / "alpha_0", "20260101_080300",
              {"pretrained": ALPHA, "method": "l2s", "steering": "l2s.safetensors", "alpha": 0}, {"vision": "half", "text": "half"})
    write_run(runs / "alpha" / "sweep_amps" / "alpha_2", "20260101_080400",
              {"pretrained": ALPHA, "method": "amps", "steering": "amps.safetensors", "alpha": 2},
              {"vision": "all", "text": "collapse_quarter"})
    write_run(runs / "beta" / "none", "20260102_093000", {"pretrained": BETA, "method": "none"},
              {"vision": "all", "text": "half"})
    return runs


@pytest.fixture
def results(tmp_path) -> Path:
    return make_results(tmp_path / "site")


def index_of(runs: Path):
    found, problems = discover(runs)
    assert problems == []
    return build_index(found, problems, defaults={})


# ---- rows -------------------------------------------------------------------------------------------
def test_one_row_per_model_and_method_with_both_targets(results):
    rows = leaderboard_rows(index_of(results))
    assert [(r.model, r.method) for r in rows] == [("alpha-vl", "none"), ("alpha-vl", "inst"), ("alpha-vl", "mean"),
                                                   ("alpha-vl", "amps"), ("beta-vl", "none")]
    assert all(set(r.sides) == {"vision", "text"} for r in rows)  # both targets in the same row
    for row in rows:  # alpha 0 is the unsteered model, never a steered row
        assert all(0 not in side.alphas and side.variant.alpha != 0 for side in row.sides.values())
    by = {(r.model, r.method): r for r in rows}
    mean = by[("alpha-vl", "mean")]
    vision, text = mean.sides["vision"], mean.sides["text"]
    assert (vision.alphas, vision.choice, vision.cell.target_acc, vision.cell.others) == ((1.0,), "held-out", 1.0, 0.0)
    assert (text.alphas, text.choice, text.cell.target_acc) == ((2.0,), "held-out", 1.0)
    assert vision.cell.strength == pytest.approx(0.1) and text.cell.strength == pytest.approx(0.2)
    assert [p.name for p in vision.runs] == ["20260101_080201_results.json"]  # the file at the chosen alpha
    assert "held-out halves of 4+4 items" in vision.choice_note
    amps = by[("alpha-vl", "amps")]
    assert amps.sides["vision"].alphas == (2.0,) and amps.sides["vision"].choice == "single α"
    assert amps.sides["text"].cell.target_acc == 0.75 and amps.sides["text"].cell.others == 0.25
    base = by[("beta-vl", "none")]
    assert (base.sides["vision"].alphas, base.choice, base.items) == ((), "", "8")
    assert base.sides["vision"].cell.target_acc == 1.0 and base.sides["text"].cell.target_acc == 0.5


def test_dates_are_iso_utc_from_lmms_evals_utc_plus_8():
    assert iso_utc("20261202_023924") == "2026-12-01T18:39:24Z"
    assert iso_utc("20260101_080000") == "2026-01-01T00:00:00Z"
    assert iso_utc("20260301_030000") == "2026-02-28T19:00:00Z"
    assert iso_utc("not a date") is None and iso_utc("") is None


def test_row_dates_are_the_newest_run_in_utc(results):
    by = {(r.model, r.method): r for r in leaderboard_rows(index_of(results))}
    assert by[("beta-vl", "none")].date == "2026-01-02T01:30:00Z"
    assert by[("alpha-vl", "mean")].date == "2026-01-01T00:02:02Z"  # the sweep's newest alpha


def test_short_data_names():
    assert short_data(DataId("synthetic:seed=3,image_size=84,v1", 128)) == "generated, seed 3"
    assert short_data(DataId("mc2:7fcb45ef6a49", 2000, 5)) == "MC2 7fcb45ef6a49, --limit 5"
    assert short_data(DataId("path:/data/mc2", 10)) == "mc2"


@pytest.mark.parametrize("lo, hi, expected", [(0, 4, [0, 1, 2, 3, 4]), (0, 0.23, [0, 0.1, 0.2, 0.3]),
                                              (0, 0, [0, 0.25, 0.5, 0.75, 1]), (-1, 2, [-1, 0, 1, 2])])
def test_chart_ticks_cover_the_range(lo, hi, expected):
    assert nice_ticks(lo, hi) == pytest.approx(expected)


# ---- files ------------------------------------------------------------------------------------------
def _html_rows(html: str) -> list[tuple[str, str]]:
    bodies = re.findall(r'<tbody class="entry".*?</tbody>', html, re.S)
    out = []
    for body in bodies:
        model = re.search(r'<td data-k="model"[^>]*>(?:<button[^>]*>[^<]*</button>)?([^<]+)', body).group(1)
        method = re.search(r'<td data-k="method"[^>]*>(?:<span[^>]*></span>)?([^<]+)</td>', body).group(1)
        out.append((model, method))
    return out


def _md_rows(md: str) -> list[list[str]]:
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[1:]]  # without the header


def test_page_and_markdown_carry_the_same_rows_with_links_that_resolve(results):
    site = results.parent
    html_path, md_path = write_leaderboard(results, site)
    html, md = html_path.read_text(), md_path.read_text()
    expected = [("alpha-vl", "MLLM-only"), ("alpha-vl", "Inst Design"), ("alpha-vl", "Mean steering"),
                ("alpha-vl", "AMPS"), ("beta-vl", "MLLM-only")]
    assert _html_rows(html) == expected
    md_rows = _md_rows(md)
    assert [tuple(r[:2]) for r in md_rows] == expected
    mean = md_rows[2]
    # model, method, vision: share, s.e., collapse, log-odds, strength, alpha, then at matched strength: best,
    # vs L2S, rank (one method with a strength-recorded sweep: nothing to match); text: the same; choice, items,
    # data, date (these made-up samples carry no image_logodds: '-')
    assert mean[2:8] == ["100.0", "0.0", "0.0", "-", "0.1", "1"] and mean[11:17] == ["100.0", "0.0", "0.0", "-", "0.2", "2"]
    assert mean[8:11] == mean[17:20] == ["-", "-", "-"]
    assert mean[20:24] == ["held-out", "8", "not recorded", "2026-01-01T00:02:02Z"]
    hrefs = re.findall(r'href="([^"]+)"', html) + re.findall(r"\]\(([^)]+)\)", md)
    assert len(hrefs) >= 10
    for href in hrefs:  # relative, and resolving from the page's folder
        assert not re.match(r"^(/|[a-z]+:)", href), href
        target = site / unquote(href)
        assert target.is_file() and target.name.endswith("_results.json"), href
    assert 'href="runs/alpha/sweep_mean/alpha_1/20260101_080201_results.json"' in html


def test_page_is_self_contained(results):
    html_path, _ = write_leaderboard(results, results.parent)
    html = html_path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert not re.search(r"\bsrc\s*=", html) and "@import" not in html and "url(" not in html
    assert "https://" not in html and "http://" not in html
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', html)
    assert csp and "default-src 'none'" in csp.group(1)
    assert html.count("<svg") == 2  # alpha-vl's sweeps: one panel per target (beta-vl has none)


def test_markdown_escapes_pipes_and_says_what_the_columns_are(results):
    index = index_of(results)
    md = to_markdown(leaderboard_rows(index), index, results.parent)
    assert "| model " in md and "vision share" in md and "text share" in md and "date (UTC)" in md
    assert md.count("\n| alpha-vl ") == 4 and md.count("\n| beta-vl ") == 1


# ---- in Chromium ------------------------------------------------------------------------------------
def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


PROBE = """<script>window.__blocked = [];
document.addEventListener("securitypolicyviolation", function (e) { window.__blocked.push(e.blockedURI); });</script>"""
DRIVER = """<script>
(function () {
  var table = document.getElementById("leaderboard"), out = {};
  function order() { return Array.prototype.map.call(table.tBodies, function (b) { return b.getAttribute("data-order"); }); }
  function values(key) { return Array.prototype.map.call(table.tBodies, function (b) {
    var c = b.querySelector('td[data-k="' + key + '"]'); return c.hasAttribute("data-v") ? c.getAttribute("data-v") : null; }); }
  function click(key) { table.querySelector('th[data-k="' + key + '"] button').click(); }
  function visible() { return Array.prototype.filter.call(table.tBodies, function (b) { return b.offsetParent !== null; })
    .map(function (b) { return b.getAttribute("data-search"); }); }
  function filter(text) { var f = document.getElementById("filter"); f.value = text; f.dispatchEvent(new Event("input")); }
  out.initial = order();
  click("text_share"); out.text_desc = values("text_share"); out.after_click = order();
  out.sort_state = table.querySelector('th[data-k="text_share"]').getAttribute("aria-sort");
  click("text_share"); out.text_asc = values("text_share");
  click("vision_alpha"); out.alpha_desc = values("vision_alpha");
  click("method"); out.method_asc = values("method");
  filter("beta"); out.filter_beta = visible(); out.shown = document.getElementById("shown").textContent;
  filter("alpha MEAN"); out.filter_two_terms = visible();
  filter(""); out.filter_none = visible().length;
  var first = table.tBodies[0], button = first.querySelector("button.more"), details = first.rows[1];
  out.details_hidden = details.offsetParent === null;
  button.click(); out.details_shown = details.offsetParent !== null;
  out.details_links = details.querySelectorAll("a[href]").length;
  out.svg = document.querySelectorAll("svg polyline").length;
  out.resources = performance.getEntriesByType("resource").map(function (e) { return e.name; });
  out.blocked = window.__blocked;
  var pre = document.createElement("pre"); pre.id = "driver"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}());
</script>"""


def run_in_chromium(html_path: Path, tmp_path: Path) -> tuple[dict, list[dict]]:
    """Load a copy of the page with `DRIVER` appended; return what it recorded and the requests the
    page started (Chromium's net log: requests with a web initiator; the browser's own background
    requests have none)."""
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    page = html_path.with_name("driven.html")
    html = html_path.read_text()
    page.write_text(html.replace("<head>", "<head>" + PROBE, 1).replace("</body>", DRIVER + "</body>", 1))
    netlog = tmp_path / "netlog.json"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--log-net-log={netlog}", "--window-size=1400,1000",
           "--dump-dom", page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    found = re.search(r'<pre id="driver">(.*?)</pre>', proc.stdout, re.S)
    assert found, proc.stderr[-3000:]
    import html as html_module

    recorded = json.loads(html_module.unescape(found.group(1)))
    log = json.loads(netlog.read_text())
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    started = [e["params"] for e in log["events"] if names.get(e["type"]) == "URL_REQUEST_START_JOB"
               and e.get("params", {}).get("initiator") not in (None, "not an origin")]
    return recorded, started


def _numbers(values):
    return [None if v is None else float(v) for v in values]


def test_sorting_filtering_and_details_in_chromium(results, tmp_path):
    html_path, _ = write_leaderboard(results, results.parent)
    out, started = run_in_chromium(html_path, tmp_path)
    assert out["initial"] == ["0", "1", "2", "3", "4"]
    # text share: none 50, inst 100, mean 100, amps 75, beta none 50
    assert _numbers(out["text_desc"]) == [100, 100, 75, 50, 50] and out["sort_state"] == "descending"
    assert out["after_click"] != out["initial"]
    assert _numbers(out["text_asc"]) == [50, 50, 75, 100, 100]
    assert _numbers(out["alpha_desc"]) == [2, 1, None, None, None]  # rows without alpha sort last
    assert out["method_asc"] == sorted(out["method_asc"], key=str.lower)
    assert out["filter_beta"] == ["beta-vl org/beta-vl none mllm-only"] and out["shown"] == "1 of 5 rows"
    assert out["filter_two_terms"] == ["alpha-vl org/alpha-vl mean mean steering"]
    assert out["filter_none"] == 5
    assert out["details_hidden"] and out["details_shown"] and out["details_links"] == 1  # one file gives both targets
    assert out["svg"] >= 4  # share and collapse lines of the mean and amps sweeps
    assert out["resources"] == [] and out["blocked"] == []
    assert started == [], started  # no request left the page


def test_the_network_check_sees_a_request(tmp_path):
    """The net-log check of the test above is not vacuous: a page that loads an image is caught."""
    page = tmp_path / "leaky.html"
    page.write_text("<!DOCTYPE html><html><head></head><body><pre id=\"driver\">{}</pre>"
                    "<img src='http://leak.invalid/x.png'></body></html>")
    _, started = run_in_chromium(page, tmp_path)
    assert any("leak.invalid" in json.dumps(p) or p.get("initiator") == "null" for p in started)
