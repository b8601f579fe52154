"""`make demo` offline: one line on the missing model, the tiny stand-in under its banner, and an
output that `capmill eval` and `capmill report` read."""

import json

import pyarrow.parquet as pq
import pytest

from capmill import demo
from capmill.cli.main import main as cli


@pytest.mark.slow
def test_demo_offline_falls_back_and_its_output_evaluates_and_reports(tmp_path, monkeypatch, capsys, tiny_models):
    import capmill.testing.tiny_models as tm

    monkeypatch.setattr(tm, "cached_tiny_models", lambda root: tiny_models)  # built once per session
    assert demo.main(str(tmp_path / "demo"), "capmill-test/no-such-model") == 0
    printed = capsys.readouterr().out
    first = printed.splitlines()[0]
    assert "capmill-test/no-such-model" in first and "hf download" in first and "python -m capmill.demo" in first
    assert "TINY RANDOM TEST MODEL" in printed and "capmill inspect" in printed

    out = tmp_path / "demo" / "out"
    rows = [r for p in sorted(out.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert len(rows) == 24 and all(r["status"] == "ok" for r in rows)
    assert all(r["caption.ssc"] is not None and r["caption.dsc"] is not None for r in rows)

    scorer = json.dumps({"type": "clip", "model": str(tiny_models / "clip")})
    result = tmp_path / "eval.json"
    assert cli(["eval", str(out), "--fields", "alt_text,ssc,dsc", "--scorer", scorer, "--bags", "3",
                "--json", str(result)]) == 0
    figures = json.loads(result.read_text())
    assert {"alt_text", "ssc", "dsc"} <= set(figures)
    assert all(0 <= figures[f]["CLIPScore"] <= 2.5 and 0 <= figures[f]["R@1"] <= 1 for f in ("ssc", "dsc"))

    assert cli(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert page.count("<html") == 1 and rows[0]["key"] in page
