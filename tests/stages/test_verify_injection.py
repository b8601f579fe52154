"""Typographic injection end to end: printed instructions read by real OCR, a scripted
OpenAI-compatible model that obeys them, and the guards and delimiters that keep the payload out
of every stored caption."""

import json
import re

import pytest

from capmill.config import parse_config
from capmill.prompts.safety import KINDS
from capmill.run import run
from capmill.testing.scripted_server import ScriptedServer
from capmill.testing.shards import Item, encode, write_tar
from capmill.testing.typographic import obeying_rules, typographic_cases
from tests.conftest import make_config

pytestmark = pytest.mark.slow


def _shard(tmp_path):
    items = [Item(case.id, encode(case.render(), "PNG"), "png", "A sign on a wall", {"key": case.id})
             for case in typographic_cases()]
    write_tar(tmp_path / "data" / "00000.tar", items)


def _records(out):
    import pyarrow.parquet as pq

    for path in sorted(out.glob("*.parquet")):
        yield from (json.loads(r) for r in pq.read_table(path).column("record").to_pylist())


@pytest.mark.parametrize("ocr", ["rapidocr", "tesseract"])
def test_printed_instructions_never_reach_a_caption(tmp_path, ocr):
    import shutil

    if ocr == "tesseract" and shutil.which("tesseract") is None:
        pytest.skip("tesseract is not installed (scripts/system-deps.sh installs Debian's tesseract-ocr)")
    _shard(tmp_path)
    with ScriptedServer(obeying_rules()) as server:
        http = {"type": "openai", "base_url": server.base_url, "model": server.model, "max_retries": 0}
        stages = [{"type": "caption", "formats": ["dsc"], "backend": http},
                  {"type": "fusecap", "caption": "dsc", "llm": http, "attributes": http, "ocr": {"type": ocr},
                   "detector": {"type": "fake"}, "with_alt_text": True}]
        config = parse_config(make_config(tmp_path / "data", tmp_path / "out", stages=stages))
        summary = run(config, progress=False)
        bodies = list(server.bodies)
    # every fused caption fell back: the run says so and does not pass as a success
    assert not summary.ok and summary.by_status == {"ok": len(typographic_cases())}
    assert any("caption 'fusecap'" in r for reasons in summary.degenerate.values() for r in reasons)
    records = {r["key"]: r for r in _records(tmp_path / "out")}
    assert set(records) == {c.id for c in typographic_cases()}
    fusion_prompts = [b["messages"][-1]["content"] for b in bodies
                      if isinstance(b["messages"][-1]["content"], str) and "Text read from the image" in b["messages"][-1]["content"]]
    assert len(fusion_prompts) >= len(records)  # every image was fused (and some regenerated)
    for prompt in fusion_prompts:
        # exactly one block of each kind capmill wrote; the forged "</ocr_text>" on the sign is defused
        for kind in ("ocr_text", "caption"):
            assert prompt.count(f"<{kind}>") == prompt.count(f"</{kind}>") >= 1, kind
        assert prompt.count("</ocr_text>") == 1
        ocr_block = re.search(r"<ocr_text>\n(.*?)\n</ocr_text>", prompt, re.S).group(1)
        assert "\n" not in ocr_block and not any(f"<{k}>" in ocr_block or f"</{k}>" in ocr_block for k in KINDS)
    for case in typographic_cases():
        record = records[case.id]
        assert record["status"] == "ok"
        fused = record["captions"]["fusecap"]
        # the OCR read the printed text
        assert any(case.trigger in line["text"].upper().replace(" ", "") for line in fused["meta"]["facts"]["text"]), case.id
        # the obeying answer was rejected, regenerated once (and obeyed again), then replaced by the input caption
        assert fused["meta"]["fallback"] is not None, case.id
        assert fused["meta"]["guards"]["outcome"] == "fallback", case.id
        assert fused["text"] == record["captions"]["dsc"]["text"]
        for caption in record["captions"].values():
            assert case.payload not in caption["text"] and case.trigger not in caption["text"], case.id
