"""Score, filter, dedup, align_bin and tldr stages, driven through real runs with the fake scorer
(a deterministic test double implementing ImageTextScorer/TextEmbedder)."""

import json
import math

import numpy as np
import pytest

from capmill.backends.fake import FakeBackend, FakeBackendConfig
from capmill.config import parse_config
from capmill.metrics.embedding import clipscore_from_cosine
from capmill.readers.run_output import RunOutputInput
from capmill.run import run
from capmill.sample import Caption, Sample
from capmill.stages.align_bin import AlignBinStageConfig, assign_bin, uniform_edges
from capmill.stages.base import RunContext
from capmill.stages.dedup import DedupStageConfig, normalise_text
from capmill.stages.filter import FilterRule, FilterStageConfig
from capmill.stages.score import ClipScoreStageConfig
from capmill.stages.text_similarity import TextSimilarityStageConfig
from capmill.stages.tldr import kmeans, select
from capmill.testing import generated, write_webdataset
from tests.conftest import make_config

FAKE = {"type": "fake", "dim": 16}


def read_all(out):
    reader = RunOutputInput(path=str(out)).build()
    return {s.key: s for shard in reader.shards() for s in reader.read(shard)}


def sample(key, alt="a red dog", seed=0, **captions):
    s = Sample(key=key, alt_text=alt, captions={k: Caption(v, k) for k, v in captions.items()})
    s.image.image = generated(seed, (32, 32))
    return s


def test_clip_score_matches_backend_cosines():
    stage = ClipScoreStageConfig(backend=FAKE).build()
    stage.setup(RunContext())
    batch = [sample("a", dsc="a dog on a beach"), sample("b", alt="", seed=1, dsc="   ")]
    stage.process(batch)
    fake = FakeBackend(FakeBackendConfig(dim=16))
    img = fake.embed_images([batch[0].image.image])[0]
    for field, text in (("alt_text", "a red dog"), ("dsc", "a dog on a beach")):
        cos = float(img @ fake.embed_texts([text])[0])
        assert batch[0].scores[f"clip:{field}"] == pytest.approx(cos, abs=1e-6)
        pref = float(img @ fake.embed_texts(["A photo depicts " + text])[0])
        assert batch[0].scores[f"clipscore:{field}"] == pytest.approx(2.5 * max(pref, 0.0), abs=1e-6)
    # empty AltText and a blank caption get no score rather than a meaningless one
    assert batch[1].scores == {}


def test_clipscore_scale_clips_and_keeps_nan():
    out = clipscore_from_cosine(np.array([-0.2, 0.0, 0.4, np.nan]))
    assert out[:3].tolist() == [0.0, 0.0, 1.0] and math.isnan(out[3])


def test_text_similarity_only_captions():
    stage = TextSimilarityStageConfig(backend=FAKE).build()
    stage.setup(RunContext())
    batch = [sample("a", dsc="a dog", ssc="a red dog"), sample("b", alt=None, dsc="x")]
    stage.process(batch)
    assert set(batch[0].scores) == {"textsim:dsc", "textsim:ssc"}
    assert batch[0].scores["textsim:ssc"] == pytest.approx(1.0)  # same text as the AltText
    assert batch[1].scores == {}


def test_filter_rules_reasons_and_nan():
    stage = FilterStageConfig(rules=[{"score": "clip:alt_text", "min": 0.3}, {"length": "dsc", "max": 3}]).build()
    cases = {
        "low": ({"clip:alt_text": 0.1}, "one two"),
        "nan": ({"clip:alt_text": float("nan")}, "one"),
        "long": ({"clip:alt_text": 0.3}, "one two three four"),
        "ok": ({"clip:alt_text": 0.5}, "one two three"),
    }
    results = {}
    for key, (scores, dsc) in cases.items():
        s = sample(key, dsc=dsc)
        s.scores.update(scores)
        results[key] = stage.process_one(s)
    assert results["low"].error == "filter: clip:alt_text < 0.3"
    assert results["nan"].error == "filter: clip:alt_text missing"
    assert results["long"].error == "filter: dsc words > 3"
    assert results["ok"].ok
    with pytest.raises(ValueError):
        FilterRule(score="x", length="dsc", min=1)
    with pytest.raises(ValueError):
        FilterRule(score="x")


def test_score_then_filter_run_counts_drops(tmp_path):
    write_webdataset(tmp_path / "data", shards=2, per_shard=6)
    stages = [
        {"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"]},
        {"type": "clip_score", "backend": FAKE},
        {"type": "filter", "rules": [{"score": "clip:alt_text", "min": 0.0}]},
    ]
    cfg = make_config(tmp_path / "data", tmp_path / "out", stages=stages)
    cfg["output"]["rejects"] = True
    summary = run(parse_config(cfg), progress=False)
    assert summary.ok
    records = read_all(tmp_path / "out")
    kept = [s for s in records.values() if s.ok]
    assert kept and all(s.scores["clip:alt_text"] >= 0 and "clipscore:ssc" in s.scores for s in kept)
    stats = [json.loads(p.read_text()) for p in (tmp_path / "out" / "_stats").glob("*.json")]
    dropped = sum(st["drops"].get("filter: clip:alt_text < 0", 0) for st in stats)
    assert dropped == 12 - len(kept) and dropped > 0  # random fake vectors: some cosines are negative
    assert len(list((tmp_path / "out" / "_rejects").glob("*.parquet"))) == 2


def test_dedup_exact_and_near_within_and_across_batches():
    # fit_exact: false decides the input targets while streaming (the fit path: tests/fit).
    stage = DedupStageConfig(exact=["image", "alt_text"], near=["dsc"], threshold=0.99, backend=FAKE,
                             fit_exact=False).build()
    stage.setup(RunContext())
    a = sample("a", alt="A red dog!", dsc="one")
    a.image.data = b"img-a"
    b = sample("b", alt="a  RED dog", dsc="two")  # same normalised AltText
    b.image.data = b"img-b"
    c = sample("c", alt="cat", dsc="three")
    c.image.data = b"img-a"  # same bytes as a
    stage.process([a, b, c])
    assert a.ok and b.error == "dedup: exact alt_text" and c.error == "dedup: exact image"
    assert b.meta["duplicate_of"] == "a"
    d = sample("d", alt="bird", dsc="one")  # same caption text as a: near duplicate (cosine 1)
    d.image.data = b"img-d"
    e = sample("e", alt="fish", dsc="five")
    e.image.data = b"img-e"
    stage.process([d, e])
    assert d.error == "dedup: near dsc" and d.meta["duplicate_of"] == "a" and e.ok
    assert normalise_text("  Héllo,  WORLD! ") == "héllo world"


def test_dedup_resume_seeds_from_committed_output(tmp_path):
    # shard 00001 is a copy of shard 00000 under another name: each of its images repeats one of 00000
    write_webdataset(tmp_path / "data", shards=1, per_shard=4)
    (tmp_path / "data" / "00001.tar").write_bytes((tmp_path / "data" / "00000.tar").read_bytes())
    cfg = make_config(tmp_path / "data", tmp_path / "out", stages=[{"type": "dedup", "exact": ["image"]}])
    cfg["input"]["key_prefix"] = "shard"
    cfg["executor"]["shards_in_flight"] = 1
    cfg["reliability"] = {"fail_at_drop_share": 2}  # a shard made only of duplicates is the point here
    config = parse_config(cfg)
    assert run(config, progress=False).ok
    out = tmp_path / "out"
    assert json.loads((out / "_stats" / "00001.json").read_text())["drops"] == {"dedup: exact image": 4}
    # a run killed before shard 00001 committed: the rerun must still see 00000's images
    for name in ("_stats/00001.json", "00001.tar", "00001.parquet"):
        (out / name).unlink()
    assert run(config, progress=False).ok
    assert json.loads((out / "_stats" / "00001.json").read_text())["drops"] == {"dedup: exact image": 4}
    assert sum(s.ok for s in read_all(out).values()) == 4


def test_align_bin_edges_and_assignment():
    edges = uniform_edges([0.1, 0.5, 0.3, float("nan")], 4)
    assert edges == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert [assign_bin(v, edges) for v in (0.0, 0.1, 0.25, 0.5, 0.9)] == [0, 0, 1, 3, 3]
    assert assign_bin(float("nan"), edges) is None
    with pytest.raises(ValueError):
        AlignBinStageConfig(edges=[0, 1], bins=8)


def test_align_bin_two_pass_run(tmp_path):
    write_webdataset(tmp_path / "data", shards=2, per_shard=8)
    stages = [
        {"type": "clip_score", "backend": FAKE, "clipscore": False},
        {"type": "align_bin", "scorer": FAKE},
    ]
    cfg = parse_config(make_config(tmp_path / "data", tmp_path / "out", stages=stages))
    assert run(cfg, progress=False).ok
    fits = list((tmp_path / "out" / "_fit").glob("align_bin-*.json"))
    assert len(fits) == 1
    edges = json.loads(fits[0].read_text())["edges"]
    records = read_all(tmp_path / "out").values()
    cosines = [s.scores["clip:alt_text"] for s in records]
    assert edges[0] == pytest.approx(min(cosines)) and edges[-1] == pytest.approx(max(cosines))
    bins = [s.scores["align_bin"] for s in records]
    assert min(bins) == 0 and max(bins) == 7
    assert all(s.scores["align_bin"] == assign_bin(s.scores["clip:alt_text"], edges) for s in records)


def test_tldr_selection_and_run(tmp_path):
    keys = [f"k{i}" for i in range(10)]
    labels = np.array([0] * 6 + [1] * 4)
    scores = np.arange(10, dtype=float)  # median 4.5
    decisions = select(keys, labels, scores, stride=2)
    kept = sorted(k for k, (_, d) in decisions.items() if d == 0)
    assert kept == ["k6", "k8"]  # stride picks k0,k2,k4 | k6,k8; only ≥ median survive
    x = np.concatenate([np.tile([1.0, 0, 0], (5, 1)), np.tile([0, 1.0, 0], (5, 1))]) + 0.01
    _, lab = kmeans(x / np.linalg.norm(x, axis=1, keepdims=True), 2, seed=0)
    assert len(set(lab[:5])) == 1 and len(set(lab[5:])) == 1 and lab[0] != lab[5]

    write_webdataset(tmp_path / "data", shards=2, per_shard=8)
    stages = [{"type": "tldr", "scorer": FAKE, "clusters": 3, "stride": 2}]
    assert run(parse_config(make_config(tmp_path / "data", tmp_path / "out", stages=stages)), progress=False).ok
    records = read_all(tmp_path / "out")
    ok = [s for s in records.values() if s.ok]
    assert 0 < len(ok) <= 8
    reasons = {s.error for s in records.values() if not s.ok}
    assert reasons <= {"tldr: not in the cluster stride", "tldr: below the median score"}
