"""The caption contract `{type: caption, formats: [ssc], backend: {type: transformers, model: …}}`
runs end to end through capmill.run on tiny shards."""

import json

import pyarrow.parquet as pq

from capmill.config import parse_config
from capmill.run import run
from tests.conftest import make_config


def test_caption_stage_with_tiny_qwen2_vl(tiny_models, tmp_path):
    from capmill.testing import write_webdataset

    data = tmp_path / "data"
    write_webdataset(data, shards=1, per_shard=5)
    model = str(tiny_models / "qwen2_vl")
    # Random weights cut off at 6 tokens write what the output guards rightly reject (they fall
    # back to the AltText); this test is about the model's path, so they are off here.
    stage = {"type": "caption", "formats": ["ssc"], "guards": {"enabled": False},
             "backend": {"type": "transformers", "model": model, "params": {"max_new_tokens": 6}}}
    config = parse_config(make_config(data, tmp_path / "out", stages=[stage]))
    summary = run(config, progress=False)
    assert summary.ok
    rows = pq.read_table(tmp_path / "out" / "00000.parquet").to_pylist()
    assert len(rows) == 5
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    for row in rows:
        caption = json.loads(row["record"])["captions"]["ssc"]
        assert caption["model"] == model and caption["prompt_id"] == "ssc@1"
        assert caption["text"] and caption["text"] == row["caption.ssc"]
        assert caption["meta"]["backend"] == "transformers"
