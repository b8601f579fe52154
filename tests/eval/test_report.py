"""`capmill report`: the page loads in headless Chromium without console errors and shows every sample."""

import json
import re
import shutil
import subprocess

import pytest

from capmill.cli.main import main as cli
from capmill.config import parse_config
from capmill.report import collect
from capmill.run import run
from capmill.testing import write_webdataset
from tests.conftest import make_config

FAKE = {"type": "fake", "dim": 16}


@pytest.fixture(scope="module")
def scored_output(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    write_webdataset(root / "data", shards=2, per_shard=8, corrupt=True)
    stages = [
        {"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc", "dsc"]},
        {"type": "clip_score", "backend": FAKE},
        {"type": "filter", "rules": [{"score": "clip:dsc", "min": 0.0}]},
    ]
    cfg = make_config(root / "data", root / "out", stages=stages)
    cfg["output"]["rejects"] = True
    run(parse_config(cfg), progress=False)
    out = root / "out"
    # a caption that would break the page if it were inserted as HTML
    assert cli(["eval", str(out), "--fields", "alt_text,dsc", "--scorer", "{type: fake, dim: 8}", "--bags", "3"]) == 0
    return out


def chromium_dom(page, tmp_path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Chromium is not installed (bash scripts/system-deps.sh installs Debian's chromium)")
    proc = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    return proc.stdout, [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


def test_report_loads_in_chromium_and_shows_every_sample(scored_output, tmp_path):
    data = collect(str(scored_output))
    expected = data["total"]
    assert data["statuses"].get("dropped", 0) > 0 and data["statuses"]["ok"] > 0
    assert data["statuses"]["decode_error"] > 0  # the hostile images keep their rows
    assert data["eval"]["dsc"]["CLIPScore"] is not None
    assert data["drops"] == {"filter: clip:dsc < 0": data["statuses"]["dropped"]}

    assert cli(["report", str(scored_output)]) == 0
    page = scored_output / "report.html"
    dom, console = chromium_dom(page, tmp_path)
    assert console == [], console
    assert 'data-ready="1"' in dom
    assert re.search(r'id="errors"></pre>', dom)
    assert f'data-count="{expected}"' in dom
    assert len(re.findall(r'class="sample status-', dom)) == expected
    # one histogram per score key, e.g. clip:dsc and clipscore:alt_text
    keys = {k for s in data["samples"] for k in s["scores"]}
    assert {"clip:dsc", "clipscore:alt_text"} <= keys
    assert len(re.findall(r'class="hist" data-score=', dom)) == len(keys)
    assert "RefCLIPScore" not in dom and "CLIPScore" in dom  # eval table present (no references given)


def test_report_is_safe_and_handles_nan(tmp_path):
    from capmill.sample import Caption, Sample
    from capmill.writers.parquet import ParquetWriter

    out = tmp_path / "out"
    out.mkdir()
    (out / "_run.json").write_text(json.dumps({"config_hash": "x", "models": {}}))
    (out / "_stats").mkdir()
    w = ParquetWriter(str(out), "00000", "alt_text")
    evil = Sample(key="k1", alt_text="</script><script>console.error('pwned')</script>",
                  captions={"dsc": Caption("<img src=x onerror=console.error(1)>", "dsc")},
                  scores={"clip:dsc": float("nan"), "clip:alt_text": 0.2})
    w.write(evil)
    w.write(Sample(key="k2", alt_text="fine", scores={"clip:alt_text": 0.4}))
    outputs = w.commit()
    (out / "_stats" / "00000.json").write_text(json.dumps({"shard": "00000", "outputs": outputs, "drops": {}}))
    assert cli(["report", str(out)]) == 0
    dom, console = chromium_dom(out / "report.html", tmp_path)
    assert console == [], console
    assert 'data-count="2"' in dom and "<img src=\"x\"" not in dom


def test_report_refuses_non_output(tmp_path, capsys):
    assert cli(["report", str(tmp_path)]) == 2
    assert "not a capmill output directory" in capsys.readouterr().err
