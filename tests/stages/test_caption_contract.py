"""The config contract of the formats work, run as written with tiny random models:
caption (ssc, dsc, dsc_plus) with a transformers VLM, then fuse with a transformers chat LM."""

import json
import shutil

import pyarrow.parquet as pq
import pytest

from capmill import registry
from capmill.config import parse_config
from capmill.run import run
from tests.conftest import make_config

pytestmark = pytest.mark.skipif(
    "transformers" not in registry.available(registry.BACKENDS),
    reason="needs the transformers backend (pip install 'capmill[transformers]')",
)

CONTRACT = [
    {"type": "caption", "formats": ["ssc", "dsc", "dsc_plus"], "backend": {"type": "transformers", "model": "models/qwen2_vl"}},
    {"type": "fuse", "template": "capsfusion", "caption": "dsc", "backend": {"type": "transformers", "model": "models/qwen2_lm"}},
]


def test_contract_config_runs_as_written(tiny_models, tmp_path, monkeypatch):
    import torch

    torch.set_num_threads(1)
    (tmp_path / "models").mkdir()
    for name in ("qwen2_vl", "qwen2_lm"):
        shutil.copytree(tiny_models / name, tmp_path / "models" / name)
    monkeypatch.chdir(tmp_path)  # the contract names models by relative path
    from capmill.testing import write_webdataset

    write_webdataset(tmp_path / "data", shards=1, per_shard=3)
    cfg = make_config(tmp_path / "data", tmp_path / "out", stages=CONTRACT)
    # Random weights: every fusion may fall back, which would fail the run as degenerate.
    cfg["reliability"] = {"fail_at_fallback_share": 2}
    summary = run(parse_config(cfg), progress=False)
    assert summary.ok, summary.render()
    stats = json.loads((tmp_path / "out" / "_stats" / "00000.json").read_text())
    assert stats["by_status"] == {"ok": 3}
    assert set(stats["captions"]) == {"ssc", "dsc", "dsc_plus", "capsfusion"}
    for name in ("ssc", "dsc", "dsc_plus"):
        assert sum(stats["captions"][name]["outcomes"].values()) == 3
    assert stats["captions"]["dsc"]["clip_tokens"]["p95"] <= 77
    # Random weights write gibberish: whatever came out, dsc fits CLIP's context, and every
    # fused caption is stored, either accepted or as a fallback counted by reason.
    fused = stats["captions"]["capsfusion"]
    assert fused["count"] == 3
    assert sum(fused["fallbacks"].values()) <= 3
    records = [json.loads(r["record"]) for r in pq.read_table(tmp_path / "out" / "00000.parquet").to_pylist()]
    for record in records:
        caption = record["captions"]["capsfusion"]
        assert caption["prompt_id"] == "capsfusion@2"
        assert caption["meta"]["fallback"] is None or caption["meta"]["rejected"] is not None or caption["meta"]["fallback"] == "backend_error"
