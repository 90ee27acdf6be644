"""engine.report.render: the sample report (tests/fixtures/report/sample.json) rendered to PNG plots,
report.md and a self-contained report.html; degenerate reports (one variant, everything failed)
rendered without a crash; report.html opened in headless Chromium (every image decodes, no error)."""
from __future__ import annotations

import base64
import copy
import html
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from PIL import Image

from helpers import REPO

from engine.report.render import document, render, to_markdown

SAMPLE = REPO / "tests" / "fixtures" / "report" / "sample.json"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALL_PLOTS = {f"plots/{n}.png" for n in ("accuracy_by_precision", "time_by_stage", "cut_size", "accuracy_vs_components",
                                        "int8_sensitivity", "backprop_vs_gradient_free", "recipes")}


def _sample() -> dict:
    return json.loads(SAMPLE.read_text())


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """(report, out_dir, returned files, md text, html text) of the sample."""
    out = tmp_path_factory.mktemp("rendered")
    rep = _sample()
    files = render(rep, out)
    return rep, out, files, (out / "report.md").read_text(), (out / "report.html").read_text()


class _Refs(HTMLParser):
    """Every src/href attribute of a page, and the src of each <img>."""

    def __init__(self):
        super().__init__()
        self.refs, self.img_srcs = [], []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href"):
                self.refs.append(value or "")
                if tag == "img":
                    self.img_srcs.append(value or "")


def _refs(page: str) -> _Refs:
    parser = _Refs()
    parser.feed(page)
    return parser


def _png_image(data: bytes) -> Image.Image:
    assert data[:8] == PNG_SIGNATURE
    Image.open(io.BytesIO(data)).verify()
    im = Image.open(io.BytesIO(data))
    im.load()
    return im.convert("RGB")


def _decode_data_png(uri: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix), uri[:60]
    return base64.b64decode(uri[len(prefix):], validate=True)


def test_every_file_is_written_and_every_plot_is_a_real_png(rendered):
    _, out, files, _, _ = rendered
    assert set(files) == {"report.md", "report.html"} | ALL_PLOTS  # the sample has data for every plot
    assert all(files[k] == k and (out / k).is_file() for k in files)
    for rel in ALL_PLOTS:
        data = (out / rel).read_bytes()
        assert len(data) > 10_000, rel
        im = _png_image(data)
        colors = im.getcolors(1 << 24)
        assert len(colors) > 20, f"{rel}: {len(colors)} colours"  # axes, text, several series
        assert max(c for c, _ in colors) < 0.97 * im.width * im.height, f"{rel} is nearly blank"


def test_every_plot_is_linked_from_the_markdown_and_embedded_in_the_html(rendered):
    _, out, files, md, page = rendered
    plots = sorted(k for k in files if k.startswith("plots/"))
    linked = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", md)
    assert sorted(linked) == plots
    embedded = sorted(_decode_data_png(s) for s in _refs(page).img_srcs)
    assert embedded == sorted((out / p).read_bytes() for p in plots)  # byte for byte, each once


def test_the_html_references_nothing_outside_itself(rendered):
    _, _, _, _, page = rendered
    refs = _refs(page).refs
    anchors = [r for r in refs if r.startswith("#")]
    ids = set(re.findall(r'\bid="([^"]+)"', page))
    assert anchors and all(a[1:] in ids for a in anchors)  # the contents link its own sections
    for ref in refs:
        if not ref.startswith("#"):
            _png_image(_decode_data_png(ref))
    lowered = page.lower()
    for bad in ("http:", "https:", "file:", "url(", "<script", "<link", "@import"):
        assert bad not in lowered, bad


def test_failed_variants_carry_their_error_in_both_documents(rendered):
    rep, _, _, md, page = rendered
    failed = [v for v in rep["variants"] if v["status"] == "failed"]
    assert failed
    for v in failed:
        row = next(line for line in md.splitlines() if v["error"] in line)
        assert row.startswith(f"| {v['cut']} | {v['precision']} | {v['backend']} | failed")
        html_row = next(r for r in re.findall(r"<tr>.*?</tr>", page) if html.escape(v["error"]) in r)
        assert f"<td>{v['backend']}</td>" in html_row and "failed" in html_row


def test_emulated_precisions_are_marked_wherever_they_appear(rendered):
    rep, _, _, md, page = rendered
    emulated = [v for v in rep["variants"] if v["emulated"]]
    assert emulated and all(v["precision"] == "fp16" for v in emulated)
    fp16_rows = [line for line in md.splitlines() if re.match(r"\| \S+ \| fp16", line)]
    assert len(fp16_rows) == len(emulated) and all("| fp16 (emulated) |" in r for r in fp16_rows)
    assert page.count("<td>fp16 (emulated)</td>") == len(emulated)
    assert "fp16 (emulated) vs fp32" in md  # the headline too
    for doc in (md, page):
        assert "no native fp16 kernels on x86" in doc
    assert "fp32 (emulated)" not in md and "int8 (emulated)" not in md


def test_a_native_fp16_is_not_marked_emulated():
    rep = _sample()
    for v in rep["variants"]:
        v["emulated"] = False
    rep["headline"]["fp16_vs_fp32"]["emulated"] = False
    md = to_markdown(document(rep, {}))  # the text alone: no plots drawn
    assert "emulated" not in md and "| fp16 |" in md


def test_the_headline_numbers_are_written(rendered):
    _, _, _, md, _ = rendered
    headline = md.split("## Headline", 1)[1].split("\n## ", 1)[0]
    assert "-0.50 ± 0.30 accuracy points, 2.17× the throughput" in headline and "0.31× the size" in headline
    assert "84.00 % vs 87.00 % (-3.00 accuracy points)" in headline and "57.7× as long" in headline


def test_every_numeric_column_header_has_a_unit(rendered):
    _, _, _, md, _ = rendered
    words = {"cut", "precision", "backend", "status", "pool", "encoder", "projection", "tensor", "op", "setting",
             "value", "rank", "graph order", "epoch", "best epoch", "variant"}
    headers = [line for i, line in enumerate(md.splitlines()[:-1]) if md.splitlines()[i + 1].startswith("| ---")]
    assert len(headers) >= 8
    for line in headers:
        for h in (c.strip() for c in line.strip("|").split(" | ")):
            assert h in words or re.search(r"\(.+\)", h), h


def _minimal() -> dict:
    rep = _sample()
    v = copy.deepcopy(rep["variants"][0])
    v["accuracy"].update(se_pct=None, per_seed_pct=[80.0], seeds=[0])
    v["featurize"]["latency_ms"] = {"p50": None, "p95": None, "p99": None}
    rep.update(variants=[v], components=[], recipes=[], sensitivity=[], baseline=[],
               headline={"cut": None, "n_components": None, "int8_vs_fp32": None, "fp16_vs_fp32": None,
                         "gradient_free_vs_backprop": None})
    return rep


def test_a_minimal_report_renders(tmp_path):
    files = render(_minimal(), tmp_path)
    assert set(files) == {"report.md", "report.html", "plots/accuracy_by_precision.png", "plots/time_by_stage.png",
                          "plots/cut_size.png", "plots/backprop_vs_gradient_free.png"}
    md = (tmp_path / "report.md").read_text()
    assert "80.00 (1 seed)" in md and "— / — / —" in md
    for section in ("Optical components (K)", "Recipes", "int8 sensitivity", "Backprop baseline"):
        assert md.split(f"## {section}\n", 1)[1].lstrip().startswith("Not run.")
    assert "int8 vs fp32: n/a" in md and "Gradient-free vs backprop: n/a" in md
    assert "emulated" not in md


def test_the_next_report_removes_a_killed_runs_temporary_folder_and_one_writer_holds_it(tmp_path):
    from engine.artifacts import TargetBusyError, target_lock
    from engine.report.write import write_report

    out = tmp_path / "rep"
    (out / ".report-k1ll3d00" / "plots").mkdir(parents=True)  # what a SIGKILLed render leaves
    (out / ".report-k1ll3d00" / "plots" / "half.png").write_bytes(b"\x89PNG")
    files = write_report(_minimal(), out)
    assert sorted(p.name for p in out.iterdir()) == ["plots", "report.html", "report.json", "report.md"]
    assert set(files) == set(json.loads((out / "report.json").read_text())["files"])
    with target_lock(out, "otl report is writing"), pytest.raises(TargetBusyError, match="otl report is writing"):
        write_report(_minimal(), out)


def _all_failed() -> dict:
    rep = _sample()
    for v in rep["variants"]:
        v.update({k: None for k in ("emulated", "backbone", "build", "featurize", "agreement", "accuracy",
                                    "timings_s", "training_s", "inference_ms_per_image")},
                 status="failed", error=f"RuntimeError: {v['id']} broke | badly <here>")
    rep["recipes"][1].update(status="failed", error="ValueError: no rows", mean_pct=None, se_pct=None, fit_s=None)
    rep["components"] = [dict(r, status="failed", error="ValueError: K too large", mean_pct=None, se_pct=None)
                         for r in rep["components"]]
    for e in rep["sensitivity"]:
        e.update(status="failed", error="RuntimeError: no int8 model", tensors=None, worst=None, first_below=None,
                 output_sqnr_db_all=None)
    rep["baseline"] = [dict(b, status="failed", error="MemoryError: out of memory", epochs=None, best=None)
                       for b in rep["baseline"]]
    rep["headline"] = {"cut": None, "n_components": None, "int8_vs_fp32": None, "fp16_vs_fp32": None,
                       "gradient_free_vs_backprop": None}
    return rep


def test_a_report_where_everything_failed_renders_with_every_error(tmp_path):
    rep = _all_failed()
    files = render(rep, tmp_path)
    assert set(files) == {"report.md", "report.html", "plots/recipes.png"}  # only the recipes have a number left
    md, page = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    for v in rep["variants"]:
        assert v["error"].replace("|", "\\|") in md and html.escape(v["error"]) in page
    assert "<here>" not in page  # escaped
    for err in ("ValueError: K too large", "RuntimeError: no int8 model", "MemoryError: out of memory"):
        assert err in md and err in page
    assert "No fp32 variant completed" in md


def test_a_plot_that_raises_is_reported_and_the_rest_is_written(tmp_path, monkeypatch):
    from engine.report import plots

    def broken(rep, plt):
        plt.figure()
        raise ZeroDivisionError("no data to divide")

    keep = [p for p in plots.PLOTS if p[0] == "time_by_stage"]
    monkeypatch.setattr(plots, "PLOTS", (("recipes", "Accuracy per recipe", broken), *keep))
    files = render(_sample(), tmp_path)
    assert set(files) == {"report.md", "report.html", "plots/time_by_stage.png"}
    assert not (tmp_path / "plots" / "recipes.png").exists()
    md = (tmp_path / "report.md").read_text()
    assert "Plot not drawn: `recipes: ZeroDivisionError: no data to divide`" in md
    assert "plots/recipes.png" not in md and "![Time by stage](plots/time_by_stage.png)" in md


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-headless-shell")
    if found is None and os.environ.get("OTL_REQUIRE_BROWSER") == "1":
        pytest.fail("OTL_REQUIRE_BROWSER=1 but neither chromium nor chromium-headless-shell is on PATH")
    if found is None:
        pytest.skip("needs chromium (or chromium-headless-shell) on PATH")
    return found


# Injected first into <head>: records console.error calls and error events (a broken image's too,
# caught while capturing), then after load writes what it saw into <pre id="otl-check">.
CHECK_SCRIPT = """<script>(function () {
  var errors = [], original = console.error;
  console.error = function () {
    errors.push(Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments);
  };
  window.addEventListener("error", function (e) {
    errors.push("error event: " + (e.message || (e.target && e.target.tagName)));
  }, true);
  window.addEventListener("load", function () {
    var imgs = Array.prototype.slice.call(document.images);
    var pre = document.createElement("pre");
    pre.id = "otl-check";
    pre.textContent = JSON.stringify({images: imgs.length, errors: errors,
      decoded: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length});
    document.body.appendChild(pre);
    original.call(console, "otl-check done");
  });
})();</script>"""


def _chrome(browser, tmp_path, *args) -> subprocess.CompletedProcess:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
           "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def _check(browser, tmp_path, page: str, name: str) -> tuple[dict, list]:
    """Open the instrumented page; returns (what the script saw, the CONSOLE lines Chromium logged)."""
    path = tmp_path / name
    path.write_text(page.replace("<head>", "<head>" + CHECK_SCRIPT, 1), encoding="utf-8")
    res = _chrome(browser, tmp_path, "--virtual-time-budget=5000", "--dump-dom", path.as_uri())
    found = re.search(r'<pre id="otl-check">(.*?)</pre>', res.stdout, re.S)
    assert found, f"no check result from chromium (rc {res.returncode}): {res.stderr[-2000:]}"
    console = [line for line in res.stderr.splitlines() if "CONSOLE" in line]
    return json.loads(html.unescape(found.group(1))), console


def test_the_html_opens_in_headless_chromium(rendered, tmp_path):
    browser = _chromium()
    _, out, files, _, page = rendered
    n_plots = sum(k.startswith("plots/") for k in files)
    seen, console = _check(browser, tmp_path, page, "checked.html")
    assert seen == {"images": n_plots, "decoded": n_plots, "errors": []}
    assert len(console) == 1 and "otl-check done" in console[0]  # the script's own line: the page logs nothing
    # The check can fail: a corrupt image and a console.error are both caught.
    broken = page.replace("base64,iVBOR", "base64,AAAA", 1)
    broken = broken.replace("</body>", "<script>console.error('boom')</script></body>")
    seen, console = _check(browser, tmp_path, broken, "broken.html")
    assert seen["decoded"] == n_plots - 1 and "boom" in seen["errors"] and len(seen["errors"]) == 2
    assert any('"boom"' in line for line in console)
    # The unmodified report, as a reader sees it: not blank.
    shot = tmp_path / "shot.png"
    res = _chrome(browser, tmp_path, "--hide-scrollbars", "--window-size=1280,2000", f"--screenshot={shot}",
                  (out / "report.html").as_uri())
    assert shot.is_file(), res.stderr[-2000:]
    im = _png_image(shot.read_bytes())
    colors = im.getcolors(1 << 24)
    assert im.size == (1280, 2000) and len(colors) > 50
    assert max(c for c, _ in colors) < 0.99 * im.width * im.height
