"""FlexCap-style region captions: boxes from the record, captions at a target length, the
`regions` record field, and the grounding export with normalised boxes."""

import json
import tarfile

import pytest
from PIL import Image

from capmill.cli.main import main
from capmill.config import parse_config
from capmill.errors import ConfigError
from capmill.export import export_config
from capmill.export.runner import export_run
from capmill.run import run
from capmill.sample import ImageRef, Sample
from capmill.stages.base import RunContext
from capmill.stages.regions import RegionsStageConfig
from capmill.testing.shards import BOXES
from tests.conftest import make_config

FAKE = {"type": "fake", "words": 12}


def _stage(backend=FAKE, **config):
    stage = RegionsStageConfig.model_validate({"backend": backend, **config}).build()
    stage.setup(RunContext())
    return stage


def _sample(meta, size=(200, 100)):
    return Sample(key="k", image=ImageRef(image=Image.new("RGB", size, (9, 99, 199))), alt_text="x", meta=meta)


def test_each_box_gets_a_caption_at_the_target_length():
    stage = _stage(words=5, min_side=8)
    sample = stage.process([_sample({"boxes": BOXES})])[0]
    first, second, tiny = sample.regions
    assert first["box"] == [0.05, 0.1, 0.6, 0.8] and first["score"] is None and "label" not in first
    assert second["score"] == 0.8 and second["label"] == "shape"
    for region in (first, second):
        assert region["caption"] and len(region["caption"].split()) <= 5 and region["words"] == 5
        assert region["model"] == "fake:fake" and region["prompt_id"] == "flexcap@1"
    assert tiny["caption"] is None and tiny["skipped"] == "crop 10x5 px is under min_side 8"
    # one request per region, each with its crop, in one call
    assert stage.backend.batch_sizes == [2] and "about 5 words" in stage.backend.prompts[0]


def test_pixel_boxes_use_the_record_size_and_bad_boxes_are_reported():
    stage = _stage(box_units="pixels", min_side=1)
    # the record describes a 400x200 original; the decoded image is half that
    sample = stage.process([_sample({"json": {"boxes": [[40, 20, 200, 100], [0, 0, 900, 10]], "width": 400,
                                              "height": 200}})])[0]
    assert [r["box"] for r in sample.regions] == [[0.1, 0.1, 0.5, 0.5]]
    assert sample.meta["regions"]["problems"] == ["box 1: outside the image"]
    none = stage.process([_sample({})])[0]
    assert none.ok and none.regions == []


def test_a_refused_region_caption_is_regenerated_then_flagged():
    refusing = {"type": "fake", "script": [{"when": "Describe what this image shows", "answer": "I'm sorry, I can't."}]}
    stage = _stage(refusing, min_side=1)
    sample = stage.process([_sample({"boxes": BOXES[:1]})])[0]
    region = sample.regions[0]
    assert region["flagged"] == "refusal" and region["guards"]["outcome"] == "flagged"
    assert stage.backend.batch_sizes == [1, 1]


def test_regions_are_written_and_exported_for_grounding(tmp_path):
    from capmill.testing import write_webdataset

    write_webdataset(tmp_path / "data", shards=1, per_shard=4, boxes=True)
    config = parse_config(make_config(tmp_path / "data", tmp_path / "out", stages=[
        {"type": "regions", "backend": FAKE, "min_side": 40}]))
    assert run(config, progress=False).ok
    assert json.loads((tmp_path / "out" / "_run.json").read_text())["written"]["fields"] == ["alt_text", "image", "regions"]
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out" / "00000.parquet")
    regions = [json.loads(r) for r in table.column("regions").to_pylist()]
    assert all(len(r) == 3 for r in regions) and regions[0][0]["box"] == BOXES[0]
    report = export_run(str(tmp_path / "out"), export_config("grounding"), str(tmp_path / "ground"))
    assert report.written == 4 and report.degenerate is None
    keys = table.column("key").to_pylist()
    with tarfile.open(tmp_path / "ground" / "00000.tar") as tar:
        for key, stored in zip(keys, regions, strict=True):
            record = json.loads(tar.extractfile(f"{key}.json").read())
            text = tar.extractfile(f"{key}.txt").read().decode()
            # the captioned regions only, boxes as stored (normalised)
            assert [r["bbox"] for r in record["regions"]] == [r["box"] for r in stored if not r.get("skipped")]
            assert all(r["caption"] for r in record["regions"]) and record["regions"][1]["label"] == "shape"
            assert record["text_source"] == "alt_text" and text  # the image-level text: the AltText by default
    assert all(stored[2].get("skipped") for stored in regions)  # the tiny box of every image


def test_grounding_needs_regions_and_bins_need_their_score(tmp_path, wds):
    config = parse_config(make_config(tmp_path / "data", tmp_path / "out", stages=[
        {"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"]}]))
    assert run(config, progress=False, limit=4).ok
    with pytest.raises(ConfigError, match="wrote none; add a regions stage"):
        export_run(str(tmp_path / "out"), export_config("grounding"), str(tmp_path / "g"))
    with pytest.raises(ConfigError, match=r"bins keeps samples by scores\['align_bin'\]"):
        export_run(str(tmp_path / "out"), export_config("clip", overrides=["bins=[7]"]), str(tmp_path / "b"))


def test_export_keeps_only_chosen_alignment_bins(tmp_path, wds, capsys):
    config = parse_config(make_config(tmp_path / "data", tmp_path / "out", stages=[
        {"type": "align_bin", "scorer": {"type": "fake"}, "bins": 4},
        {"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc", "dsc"]}]))
    assert run(config, progress=False).ok
    import pyarrow.parquet as pq

    bins = [v for p in sorted((tmp_path / "out").glob("*.parquet")) for v in pq.read_table(p).column("score.align_bin").to_pylist()]
    keep = {2.0, 3.0}
    assert main(["export", str(tmp_path / "out"), "--target", "clip", "--out", str(tmp_path / "top"),
                 "--set", "bins=[2, 3]"]) == 0
    manifest = json.loads((tmp_path / "top" / "_export.json").read_text())
    assert manifest["written"] == sum(b in keep for b in bins) > 0
    assert manifest["skipped"] == {"align_bin not in [2, 3]": sum(b not in keep for b in bins)}


def test_a_detector_proposes_boxes_after_the_records():
    detector = {"type": "fake", "labels": ["dog", "ball", "tree"]}
    stage = _stage(detector=detector, phrases=["dog", "ball"], min_side=1)
    sample = stage.process([_sample({"boxes": BOXES[:1]})])[0]
    sources = [r["source"] for r in sample.regions]
    assert sources == ["record", "detector", "detector"]
    found = stage.detector.detect([sample.image.image], [["dog", "ball"]])[0].items
    best_first = sorted(found, key=lambda d: -d.score)
    width, height = sample.image.image.size
    for region, detection in zip(sample.regions[1:], best_first, strict=True):
        x0, y0, x1, y1 = detection.box
        assert region["label"] == detection.label and region["score"] == detection.score
        assert region["box"] == [round(v, 4) for v in (x0 / width, y0 / height, x1 / width, y1 / height)]
        assert region["caption"]
    # detections under min_score are left out; only the detector: boxes: null
    few = _stage(detector=detector, boxes=None, min_score=0.99, min_side=1).process([_sample({"boxes": BOXES})])[0]
    assert few.regions == []


def test_a_detector_failure_is_that_samples_stage_error():
    from capmill.sample import STAGE_ERROR

    stage = _stage(detector={"type": "fake", "fail_below_px": 64}, min_side=1)
    small, large = _sample({}, size=(32, 32)), _sample({}, size=(200, 100))
    small.key, large.key = "small", "large"
    stage.process([small, large])
    assert small.status == STAGE_ERROR and small.error.startswith("regions: detector:")
    assert large.ok and large.regions and all(r["source"] == "detector" for r in large.regions)
