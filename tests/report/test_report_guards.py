"""The report shows the output guards' counts from `_stats`."""

from capmill.config import parse_config
from capmill.report import collect
from capmill.report.build import render
from capmill.run import run
from capmill.testing import write_webdataset
from tests.conftest import make_config


def test_guard_counts_reach_the_report(tmp_path):
    write_webdataset(tmp_path / "data", shards=1, per_shard=4)
    script = [{"when": "Write one short sentence", "answer": "I'm sorry, but I can't describe this image."}]
    cfg = make_config(tmp_path / "data", tmp_path / "out", stages=[
        {"type": "caption", "formats": ["ssc"], "backend": {"type": "fake", "script": script}}])
    run(parse_config(cfg), progress=False)
    data = collect(str(tmp_path / "out"))
    assert data["guards"] == {"ssc: refusal": 8}  # 4 captions, each rejected twice
    page = render(data)
    assert 'id="guards"' in page and "ssc: refusal" in page
