"""The fit step: run once before streaming, stored under OUT/_fit/, handed to every worker,
reused on resume; align_bin, tldr and dedup on it. The fake backend is a deterministic test
double (hashed vectors for the scorer role, hashed probabilities for the matcher role)."""

import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from capmill.config import parse_config
from capmill.errors import SetupError
from capmill.fit import fit_key, run_fit_step
from capmill.readers.run_output import RunOutputInput
from capmill.run import run
from capmill.sample import Sample
from capmill.stages.align_bin import AlignBinStageConfig, assign_bin, uniform_edges
from capmill.stages.base import RunContext
from capmill.stages.tldr import BELOW_MEDIAN, KEEP, NOT_IN_STRIDE, retention, select
from capmill.testing import write_webdataset
from capmill.testing.shards import items, write_tar
from tests.conftest import make_config

FAKE = {"type": "fake", "dim": 16}


def read_all(out):
    reader = RunOutputInput(path=str(out)).build()
    return {s.key: s for shard in reader.shards() for s in reader.read(shard)}


def test_align_bin_equals_nocs_kbinsdiscretizer():
    # NoC fits sklearn's KBinsDiscretizer(n_bins=8, strategy="uniform") on every cosine and bins with
    # its transform; capmill's edges and bins must be the same, values beyond the range included.
    sklearn = pytest.importorskip("sklearn.preprocessing")
    rng = np.random.default_rng(3)
    cosines = rng.normal(0.28, 0.05, 5000)
    est = sklearn.KBinsDiscretizer(n_bins=8, encode="ordinal", strategy="uniform")
    est.fit(cosines.reshape(-1, 1))
    edges = uniform_edges(cosines, 8)
    assert edges == pytest.approx(list(est.bin_edges_[0]), abs=1e-12)
    probe = np.concatenate([cosines, [cosines.min() - 0.1, cosines.max() + 0.1, *edges]])
    expected = est.transform(probe.reshape(-1, 1))[:, 0].astype(int).tolist()
    assert [assign_bin(float(v), edges) for v in probe] == expected


def test_align_bin_fits_the_whole_input_from_the_score_column_alone(tmp_path, monkeypatch):
    write_webdataset(tmp_path / "data", shards=3, per_shard=7)
    scored = make_config(tmp_path / "data", tmp_path / "scored",
                         stages=[{"type": "clip_score", "backend": FAKE, "clipscore": False}])
    scored["output"]["writers"] = ["parquet"]  # no images in that output at all
    assert run(parse_config(scored), progress=False).ok
    cosines = [s.scores["clip:alt_text"] for s in read_all(tmp_path / "scored").values()]
    assert len(cosines) == 21

    cfg = parse_config({"input": {"type": "capmill", "path": str(tmp_path / "scored")},
                        "output": {"path": str(tmp_path / "binned")}, "image": {"decode": False},
                        "stages": [{"type": "align_bin"}]})
    assert cfg.stages[0].fit_samples is None  # NoC fits on the whole dataset

    def no_records(*args, **kwargs):
        raise AssertionError("the fit parsed a full record; it must read the score column only")

    with monkeypatch.context() as m:
        m.setattr(Sample, "from_json", staticmethod(no_records))
        m.setattr(Sample, "from_dict", staticmethod(no_records))
        ctx = RunContext(input=cfg.input, image=cfg.image)
        [record] = run_fit_step(cfg, str(tmp_path / "probe"), ctx)
    assert not (tmp_path / "probe").exists()  # the fit step writes nothing: the run stores it once claimed
    state = ctx.fits[record.key]
    assert state["fitted_on"] == 21 and state["scorer"] is None
    assert state["edges"][0] == pytest.approx(min(cosines)) and state["edges"][-1] == pytest.approx(max(cosines))

    summary = run(cfg, progress=False)
    assert summary.ok and any("21 of 21 samples" in line for line in summary.fits)
    for s in read_all(tmp_path / "binned").values():
        assert s.scores["align_bin"] == assign_bin(s.scores["clip:alt_text"], state["edges"])


def test_align_bin_sampled_fit_is_an_option():
    cfg = AlignBinStageConfig(fit_samples=100, scorer=FAKE)
    request = cfg.build().fit_request()
    assert request.max_samples == 100 and request.decode and request.scores == ("clip:alt_text",)


def test_the_fit_runs_once_is_reused_on_resume_and_reaches_every_worker(tmp_path):
    write_webdataset(tmp_path / "data", shards=2, per_shard=6)
    stages = [{"type": "clip_score", "backend": FAKE, "clipscore": False}, {"type": "align_bin", "scorer": FAKE}]
    cfg = parse_config(make_config(tmp_path / "data", tmp_path / "out", stages=stages))
    first = run(cfg, progress=False)
    assert first.ok and len(first.fits) == 1 and "(reused)" not in first.fits[0]
    [fit_file] = (tmp_path / "out" / "_fit").glob("align_bin-*.json")
    before = (fit_file.read_bytes(), fit_file.stat().st_mtime_ns)
    records = {k: s.scores["align_bin"] for k, s in read_all(tmp_path / "out").items()}

    # A run killed after one shard: the rerun reuses the stored fit, the bins stay the same.
    for name in ("_stats/00001.json", "00001.tar", "00001.parquet"):
        (tmp_path / "out" / name).unlink()
    second = run(cfg, progress=False)
    assert second.ok and second.fits[0].endswith("(reused)")
    assert (fit_file.read_bytes(), fit_file.stat().st_mtime_ns) == before
    assert {k: s.scores["align_bin"] for k, s in read_all(tmp_path / "out").items()} == records

    # Any worker (a Ray actor is one) gets the stored state in setup without reading the input.
    stage = cfg.stages[1].build()
    stage.setup(RunContext(out_dir=str(tmp_path / "out"), seed=cfg.seed, input=cfg.input))
    assert stage.edges == json.loads(fit_file.read_text())["edges"]
    stage.teardown()


def test_a_stage_set_up_without_its_fit_says_so():
    stage = AlignBinStageConfig(scorer=FAKE).build()
    with pytest.raises(SetupError, match="fit step"):
        stage.setup(RunContext(input=RunOutputInput(path="nowhere")))
    ctx = RunContext(input=RunOutputInput(path="nowhere"))
    ctx.fits[fit_key(stage, ctx.input, ctx.seed)] = {"edges": [0.0, 0.5, 1.0]}
    stage.setup(ctx)  # handed over in memory instead
    assert stage.edges == [0.0, 0.5, 1.0]


def test_dedup_fit_keeps_the_first_copy_in_input_order_whatever_the_arrival(tmp_path):
    # 00000 holds six images; 00001 repeats two of them and one twice within itself.
    first = list(items(6, photos=False))
    write_tar(tmp_path / "data" / "00000.tar", first)
    again = list(items(2, start=6, photos=False))
    repeats = [first[4], first[1], again[0], dataclasses.replace(again[0], key="000066"), again[1]]
    write_tar(tmp_path / "data" / "00001.tar", repeats)
    cfg = make_config(tmp_path / "data", tmp_path / "out", stages=[{"type": "dedup", "exact": ["image"]}])
    cfg["input"]["key_prefix"] = "shard"
    cfg["executor"].update(shards_in_flight=2, batch_size=1)  # the two shards interleave
    cfg["output"]["rejects"] = True
    summary = run(parse_config(cfg), progress=False)
    assert summary.ok and "3 of 11 input samples are exact duplicates" in summary.fits[0]
    assert sorted(read_all(tmp_path / "out")) == [f"00000_{i:06d}" for i in range(6)] + ["00001_000006", "00001_000007"]
    rejects = [Sample.from_json(r) for p in sorted((tmp_path / "out" / "_rejects").glob("*.parquet"))
               for r in pq.read_table(p).column("record").to_pylist()]
    dropped = {s.key: s.meta["duplicate_of"] for s in rejects}
    assert dropped == {"00001_000004": "00000_000004", "00001_000001": "00000_000001",
                       "00001_000066": "00001_000006"}


def test_tldr_select_follows_input_order_as_the_reference():
    # One cluster, stride 2: the reference keeps members 0, 2, 4 in dataset order, not key order.
    keys = ["k9", "k1", "k5", "k3", "k7"]
    scores = [0.9, 0.1, 0.8, 0.2, 0.7]  # median 0.7
    decisions = select(keys, np.zeros(5, int), scores, stride=2)
    assert {k: d for k, (_, d) in decisions.items()} == {
        "k9": KEEP, "k1": NOT_IN_STRIDE, "k5": KEEP, "k3": NOT_IN_STRIDE, "k7": KEEP}
    scores[4] = 0.0  # median 0.2: k7 (0.0) falls below
    decisions = select(keys, np.zeros(5, int), scores, stride=2)
    assert decisions["k7"][1] == BELOW_MEDIAN
    figures = retention(decisions, scores)
    assert figures == {"samples": 5, "in_stride": 3, "better_half": 3, "kept": 2, "retention": 0.4}


def test_tldr_run_reports_its_retention_and_ranks_by_itm(tmp_path):
    write_webdataset(tmp_path / "data", shards=2, per_shard=10)
    stages = [{"type": "tldr", "scorer": FAKE, "itm": FAKE, "clusters": 2, "stride": 2}]
    summary = run(parse_config(make_config(tmp_path / "data", tmp_path / "out", stages=stages)), progress=False)
    [line] = summary.fits
    [fit_file] = (tmp_path / "out" / "_fit").glob("tldr-*.json")
    state = json.loads(fit_file.read_text())
    assert state["half_by"].startswith("itm") and state["score"] == "itm:alt_text"
    kept = sum(s.ok for s in read_all(tmp_path / "out").values())
    assert state["kept"] == kept and state["samples"] == 20
    assert state["retention"] == pytest.approx(kept / 20)
    assert f"keeps {kept} of 20 samples ({100 * kept / 20:.1f}%)" in line and "better half by itm" in line
    assert f"keeps {kept} of 20" in summary.render()


@pytest.mark.slow
def test_tldr_better_half_by_a_real_blip_itm_head(tmp_path, tiny_models):
    write_webdataset(tmp_path / "data", shards=1, per_shard=8)
    stages = [{"type": "tldr", "clusters": 2, "stride": 1,
               "scorer": {"type": "clip", "model": str(tiny_models / "clip"), "device": "cpu"},
               "itm": {"type": "blip_itm", "model": str(tiny_models / "blip_itm"), "device": "cpu"}}]
    summary = run(parse_config(make_config(tmp_path / "data", tmp_path / "out", stages=stages)), progress=False)
    assert summary.ok and "better half by itm" in summary.fits[0]
    [fit_file] = (tmp_path / "out" / "_fit").glob("tldr-*.json")
    state = json.loads(fit_file.read_text())
    # stride 1 keeps every cluster member: what survives is exactly the better half by ITM.
    assert state["in_stride"] == 8 and state["kept"] == state["better_half"] == 4
    assert state["half_by"] == f"itm ({tiny_models / 'blip_itm'})"
