"""The leaderboard as people use it, on the committed demo: steered rows ranked at matched strength
with their difference to L2S, a filter that tells models from methods, no absolute machine paths,
and (in headless Chromium) a page readable at 390 px and at 1400 px, with screenshots."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from amps_eval.report import STEERED
from amps_eval.report.leaderboard import filter_keeps, leaderboard_rows, row_words, shown_value, write_leaderboard
from amps_eval.report.runs import discover
from amps_eval.report.select import build_index

from test_leaderboard import _chromium

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "results" / "demo" / "runs"
pytestmark = pytest.mark.skipif(not DEMO.is_dir(), reason="no committed demo")


@pytest.fixture(scope="module")
def demo_rows():
    runs, problems = discover(DEMO)
    return leaderboard_rows(build_index(runs, problems))


def test_steered_rows_are_ranked_at_matched_strength_and_compared_with_l2s(demo_rows):
    models = list(dict.fromkeys(r.model for r in demo_rows))
    assert len(models) == 2
    for model in models:
        rows = [r for r in demo_rows if r.model == model]
        steered = [r for r in rows if r.method in STEERED]
        assert rows[-len(steered):] == steered  # the steered rows come after the others
        assert {r.method for r in steered} == set(STEERED)  # the demo's graded data lets the oracle run
        totals = [sum(r.ranks.values()) for r in steered]
        assert totals == sorted(totals) and all(set(r.ranks) == {"vision", "text"} for r in steered)
        for target in ("vision", "text"):
            shares = {r.method: r.matched[target].summary.mean("share") for r in steered}
            best = max(shares.values())
            assert [r.method for r in steered if r.ranks[target] == 1] == [m for m, v in shares.items() if v == best]
            l2s = next(r for r in steered if r.method == "l2s")
            assert l2s.matched[target].vs_baseline == {}
            for r in steered:
                if r.method != "l2s":
                    d = r.matched[target].vs_baseline["share"]
                    assert d.difference == pytest.approx(shares[r.method] - shares["l2s"])
                    assert d.low <= d.difference <= d.high


def test_the_filter_tells_the_model_from_the_method(demo_rows):
    folder = DEMO.parent
    table = [row_words(r, folder) for r in demo_rows]

    def kept(query):
        return [(r.model, r.method) for r, keep in zip(demo_rows, filter_keeps(query, table)) if keep]

    assert kept("qwen amps") == [(r.model, r.method) for r in demo_rows
                                 if "qwen" in r.model and r.method in ("amps", "amps_beta0", "amps_oracle")]
    assert len(kept("qwen")) == len(demo_rows) // 2
    assert kept("llava method:l2s") == [("amps-organism-graded-llava-1.5", "l2s")]
    assert len(kept("model:amps")) == len(demo_rows)  # every organism's name has the word "amps"
    assert kept("QWEN Mean+MCS") == [("amps-organism-graded-qwen2.5-vl", "mean_mcs")]
    assert kept("qwen nothing") == []


def test_no_absolute_machine_path_in_what_the_leaderboard_writes(tmp_path):
    for name in ("runs", "diagnostics"):  # the demo's layout, in a folder of this machine's
        (tmp_path / name).symlink_to(DEMO.parent / name)
    html, md = write_leaderboard(tmp_path / "runs", tmp_path)
    assert "best ≤5%" in md.read_text() and "amps-organism-graded-qwen2.5-vl" in html.read_text()
    for path in (html, md):
        text = path.read_text()
        assert not re.search(r"(?<![\w.])/(tmp|work|home|root|Users)/", text), path
        assert str(ROOT) not in text and str(tmp_path) not in text
    assert shown_value("/x/y/amps-organism-qwen2.5-vl", tmp_path) == "amps-organism-qwen2.5-vl"
    assert shown_value(str(tmp_path / "runs" / "a.json"), tmp_path) == "runs/a.json"
    assert shown_value("Qwen/Qwen2.5-VL-7B-Instruct", tmp_path) == "Qwen/Qwen2.5-VL-7B-Instruct"


# ---- in Chromium: 390 px and 1400 px --------------------------------------------------------------
# Headless Chromium's window is at least 500 px wide, so the page is shown in an iframe of the wanted
# width (its own viewport: the page's media queries see that width); a srcdoc iframe shares the
# outer page's origin, so the outer page's script can read it.
LAYOUT = """
  var out = {}, wrap = doc.querySelector(".wrap"), table = doc.getElementById("leaderboard");
  var first = table.tBodies[0].rows[0];
  var model = first.querySelector('td[data-k="model"]'), method = first.querySelector('td[data-k="method"]');
  var stacked = model.querySelector(".stacked");
  out.viewport = win.innerWidth;
  out.scrollable = wrap.scrollWidth > wrap.clientWidth;
  wrap.scrollLeft = wrap.scrollWidth;
  out.scrolled = wrap.scrollLeft > 0;
  var box = model.getBoundingClientRect();
  out.model_left = box.left; out.model_right = box.right;
  var hit = doc.elementFromPoint(box.left + 5, box.top + box.height / 2);
  out.model_on_top = hit !== null && model.contains(hit);
  out.method_shown = method.offsetParent !== null;
  out.stacked_shown = stacked !== null && stacked.offsetParent !== null;
  out.stacked_text = stacked ? stacked.textContent : null;
  var f = doc.getElementById("filter"); f.value = "qwen amps"; f.dispatchEvent(new win.Event("input"));
  out.filtered = Array.prototype.filter.call(table.tBodies, function (b) { return !b.hidden; })
    .map(function (b) { return b.getAttribute("data-model-words") + " / " +
      b.querySelector('td[data-k="method"]').textContent; });
  f.value = ""; f.dispatchEvent(new win.Event("input"));
  wrap.scrollLeft = 0;
  out.sorted = {};
  ["vision_matched", "text_vs_l2s", "vision_rank"].forEach(function (key) {
    table.querySelector('th[data-k="' + key + '"] button').click();
    out.sorted[key] = Array.prototype.map.call(table.tBodies, function (b) {
      var c = b.querySelector('td[data-k="' + key + '"]');
      return c.hasAttribute("data-v") ? Number(c.getAttribute("data-v")) : null; });
  });
"""


def framed(html: Path, width: int, probe: bool) -> Path:
    """An outer page showing ``html`` in an iframe ``width`` px wide (with ``probe``: it records `LAYOUT`)."""
    import html as html_module

    script = ("<script>function probe(frame) { var doc = frame.contentDocument, win = frame.contentWindow;"
              + LAYOUT + "var pre = document.createElement('pre'); pre.id = 'driver'; "
              "pre.textContent = JSON.stringify(out); document.body.appendChild(pre); }</script>") if probe else ""
    page = html.with_name(f"framed_{width}.html")
    page.write_text(f"<!DOCTYPE html><html><head>{script}</head><body style='margin:0'>"
                    f"<iframe style='border:0;display:block' width='{width}' height='900'"
                    f"{' onload=probe(this)' if probe else ''} srcdoc=\"{html_module.escape(html.read_text())}\">"
                    "</iframe></body></html>")
    return page


def _chrome(page: Path, tmp_path: Path, width: int, *mode: str) -> subprocess.CompletedProcess:
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / f'profile{width}'}", f"--window-size={max(width, 500)},900", *mode,
           page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp_path)


def leaderboard_screenshots(out: Path, tmp_path: Path, runs: Path = DEMO) -> dict[int, Path]:
    """Screenshots of a leaderboard at 390 and 1400 px wide, 900 px high (for the README:
    ``leaderboard_screenshots(Path("docs/images"), Path(tempfile.mkdtemp()))`` after the demo)."""
    from matplotlib import image

    html, _ = write_leaderboard(runs, tmp_path / "site")
    shots = {}
    for width in (390, 1400):
        shot = out / f"leaderboard_{width}px.png"
        proc = _chrome(framed(html, width, probe=False), tmp_path, width, f"--screenshot={shot}")
        assert shot.is_file(), proc.stderr[-2000:]
        pixels = image.imread(shot)
        image.imsave(shot, pixels[:900, :width])
        shots[width] = shot
    return shots


@pytest.mark.parametrize("width", [390, 1400])
def test_the_page_keeps_model_and_method_in_view_at(width, tmp_path):
    html, _ = write_leaderboard(DEMO, tmp_path / "site")
    proc = _chrome(framed(html, width, probe=True), tmp_path, width, "--dump-dom")
    found = re.search(r'<pre id="driver">(.*?)</pre>', proc.stdout, re.S)
    assert found, proc.stderr[-3000:]
    import html as html_module

    out = json.loads(html_module.unescape(found.group(1)))
    assert out["viewport"] == width
    assert out["scrolled"] == out["scrollable"]
    assert out["model_left"] >= -0.5 and out["model_on_top"], out  # the model column stays in view
    if width == 390:
        assert out["scrollable"]
        assert out["stacked_shown"] and not out["method_shown"]  # the method moves under the model
        assert out["model_right"] <= 0.5 * width, out  # and the column leaves room for the numbers
    else:
        assert out["method_shown"] and not out["stacked_shown"]
    assert out["stacked_text"] == "MLLM-only"
    assert out["filtered"] and all("qwen" in line and "AMPS" in line for line in out["filtered"]), out["filtered"]
    for key, values in out["sorted"].items():  # the comparison columns sort, rows without a value last
        shown = [v for v in values if v is not None]
        assert len(shown) == 12 and values[:12] == shown, (key, values)  # 2 organisms x 6 steered methods
        assert shown == sorted(shown, reverse=True), (key, shown)  # numbers sort descending on the first click


def test_screenshots_at_390_and_1400_px(tmp_path):
    from matplotlib import image

    shots = leaderboard_screenshots(tmp_path, tmp_path)
    for width, shot in shots.items():
        pixels = image.imread(shot)
        assert pixels.shape[:2] == (900, width)
        assert pixels[:, :, :3].std() > 0.05  # a rendered page, not a blank image
