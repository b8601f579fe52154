"""The report's layout, measured in headless Chromium, and the golden it is compared with.

Two measures, both robust to font rendering: the geometry of the page's regions read from the
DOM (a probe script added to a copy of the page writes every region's box as JSON), compared
with a tolerance in pixels; and a coarse screenshot (the top of the page as grey blocks of
20×20 pixels) compared by mean block difference. A change of layout moves regions by far more
than either tolerance; a different font moves text by a few pixels.

Regenerate the golden after an intended layout change with `python scripts/report_golden.py`
(see that script), and look at the screenshot it writes before committing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"
WINDOW = (1280, 1600)  # the screenshot covers the top of the page: header, evaluations, histograms, controls
BLOCK = 20
# Regions whose box is compared; "N:selector" measures the N-th match.
REGIONS = ["#head", "#overview", "#eval-box", "#hist-box", "0:.hist", "3:.hist", "#controls", "#compare-box",
           "#compare", "#grid", "0:.sample", "1:.sample", "0:.evaluation"]
COUNTS = [".hist", ".evaluation", "#compare tr", ".sample", ".hist text.x-label", ".hist text.y-label", ".sample img"]

_PROBE = """
<script>
window.addEventListener("load", () => {
  const box = (sel) => {
    const m = sel.match(/^(\\d+):(.*)$/);
    const node = m ? document.querySelectorAll(m[2])[Number(m[1])] : document.querySelector(sel);
    if (!node) return null;
    const r = node.getBoundingClientRect();
    return [Math.round(r.x), Math.round(r.y + window.scrollY), Math.round(r.width), Math.round(r.height)];
  };
  const out = {regions: {}, counts: {}};
  for (const sel of REGIONS) out.regions[sel] = box(sel);
  for (const sel of COUNTS) out.counts[sel] = document.querySelectorAll(sel).length;
  const pre = document.createElement("pre");
  pre.id = "layout-probe";
  pre.textContent = JSON.stringify(out);
  document.body.append(pre);
});
</script>
"""


def run_script(page: Path, work: Path, script: str):
    """Run `script` (the body of a function, returning JSON-able data) in `page` after it has
    loaded, and return its result: how the tests use the page's controls without a driver."""
    probe = ("<script>window.addEventListener('load', () => { const result = (() => {" + script + "})();"
             "const pre = document.createElement('pre'); pre.id = 'script-result';"
             "pre.textContent = JSON.stringify(result); document.body.append(pre); });</script>")
    copy = work / "scripted.html"
    copy.write_text(page.read_text(encoding="utf-8").replace("</body>", probe + "</body>"), encoding="utf-8")
    proc = _run(["--enable-logging=stderr", "--v=0", "--dump-dom", copy.as_uri()], work / "profile-script")
    found = re.search(r'<pre id="script-result">(.*?)</pre>', proc.stdout, re.S)
    assert found, "the script did not run: " + "\n".join(line for line in proc.stderr.splitlines() if "CONSOLE" in line)
    import html

    return json.loads(html.unescape(found.group(1)))


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    exe = chromium()
    assert exe is not None, "Chromium is not installed (bash scripts/system-deps.sh)"
    return subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--force-device-scale-factor=1",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}", "--virtual-time-budget=5000", *args],
        capture_output=True, text=True, timeout=120)


def measure(page: Path, work: Path) -> dict:
    """Region boxes ([x, y, width, height] in CSS pixels) and element counts of `page`."""
    probe = _PROBE.replace("REGIONS", json.dumps(REGIONS)).replace("COUNTS", json.dumps(COUNTS))
    copy = work / "probed.html"
    copy.write_text(page.read_text(encoding="utf-8").replace("</body>", probe + "</body>"), encoding="utf-8")
    dom = _run(["--dump-dom", copy.as_uri()], work / "profile-dom").stdout
    found = re.search(r'<pre id="layout-probe">(.*?)</pre>', dom, re.S)
    assert found, "the layout probe did not run"
    import html

    return json.loads(html.unescape(found.group(1)))


def blocks(page: Path, work: Path):
    """The top of the page as a grey image of BLOCK×BLOCK means (a small numpy array)."""
    import numpy as np
    from PIL import Image

    shot = work / "shot.png"
    _run([f"--screenshot={shot}", page.as_uri()], work / "profile-shot")
    image = Image.open(shot).convert("L")
    assert image.size == WINDOW, image.size
    small = image.resize((WINDOW[0] // BLOCK, WINDOW[1] // BLOCK), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float64), shot


def geometry_differences(found: dict, golden: dict, tolerance: int = 24, relative: float = 0.08) -> list[str]:
    """Regions whose position or size moved more than max(tolerance, relative × golden value),
    and element counts that differ."""
    problems = []
    for sel, want in golden["regions"].items():
        got = found["regions"].get(sel)
        if (got is None) != (want is None):
            problems.append(f"{sel}: {got} vs golden {want}")
            continue
        if got is None:
            continue
        for name, g, w in zip(("x", "y", "width", "height"), got, want, strict=True):
            if abs(g - w) > max(tolerance, relative * abs(w)):
                problems.append(f"{sel} {name}: {g} vs golden {w}")
    for sel, want in golden["counts"].items():
        if found["counts"].get(sel) != want:
            problems.append(f"count of {sel}: {found['counts'].get(sel)} vs golden {want}")
    return problems


def build_page(root: Path) -> Path:
    """The report of a fixed small run (real photos, fake captions and scores, a filter that
    drops, hostile images, three evaluations, the last with per-sample details from references,
    COCO instances and a scripted judge): the same page on every machine but for timestamps and
    paths."""
    import json

    from capmill.cli.main import main as cli
    from capmill.config import parse_config
    from capmill.run import run
    from capmill.testing import write_webdataset
    from tests.conftest import make_config

    write_webdataset(root / "data", shards=2, per_shard=8, corrupt=True)
    stages = [
        {"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc", "dsc"]},
        {"type": "clip_score", "backend": {"type": "fake", "dim": 16}},
        {"type": "filter", "rules": [{"score": "clip:dsc", "min": 0.0}]},
    ]
    cfg = make_config(root / "data", root / "out", stages=stages)
    cfg["output"]["rejects"] = True
    assert run(parse_config(cfg), progress=False).ok
    out = root / "out"
    scorer = "{type: fake, dim: 8}"
    assert cli(["eval", str(out), "--fields", "alt_text,dsc", "--scorer", scorer, "--bags", "3"]) == 0
    assert cli(["eval", str(out), "--fields", "ssc", "--scorer", scorer, "--bags", "3", "--limit", "5"]) == 0
    keys = [f"{i:06d}" for i in range(16)]
    (root / "refs.json").write_text(json.dumps({k: ["A red car parked on a street next to a tall building.",
                                                    "A small dog sits on the green grass."] for k in keys}))
    (root / "instances.json").write_text(json.dumps({
        "images": [{"id": k} for k in keys], "categories": [{"id": 3, "name": "car"}, {"id": 18, "name": "dog"}],
        "annotations": [{"image_id": k, "category_id": 3 + 15 * (i % 2), "id": i} for i, k in enumerate(keys)]}))
    judge = ("{type: fake, script: [{when: 'list of primitive facts', answer: \"- a dog is there\\n- the car is red\"}, "
             "{when: 'List every concrete object', answer: \"- dog\\n- kite\"}, {when: 'is there kite', answer: 'no'}, "
             "{when: 'According to these', answer: 'yes'}, {when: 'Verdict: tie', answer: 'Verdict: 2'}]}")
    assert cli(["eval", str(out), "--compare", "ssc", "dsc", "--skip", "clip,retrieval,coco,vdc", "--judge", judge,
                "--references", str(root / "refs.json"), "--instances", str(root / "instances.json"),
                "--verifier", "{type: fake, yes_if: [dog]}"]) == 0
    assert cli(["report", str(out)]) == 0
    return out / "report.html"
