"""The patch_matters stage on the fake backend: regions from matched boxes, neighbours merged
(agreeing and unique facts kept, contradictions dropped), small crops skipped, failures alone."""

from capmill.stages.patch_matters import PatchMattersStageConfig
from tests.stages.verify_util import run_stage, samples, updated

GLOBAL = "A dog plays with a ball on a lawn."
FINAL = "A brown dog plays with a red ball on a green lawn, with a wooden fence at the top left."
MERGE = "AGREE:\n- A dog stands on grass.\nCONFLICT:\n- The dog is purple.\nUNIQUE:\n- A fence is visible."


def config(**changes):
    base = PatchMattersStageConfig(
        vlm={"type": "fake"}, detector={"type": "fake"},
        llm={"type": "fake", "script": [{"when": "List the things", "answer": "dog\nball"},
                                        {"when": "Sort what they say", "answer": MERGE},
                                        {"when": "Rewrite the caption", "answer": FINAL}]},
        caption="dsc_plus", min_region_px=8)
    return updated(base, **changes) if changes else base


def test_regions_merged_and_the_caption_enriched():
    stage, batch = run_stage(config(), samples(2, GLOBAL, size=(160, 120)))
    for sample in batch:
        assert sample.ok, sample.error
        caption = sample.captions["patch_matters"]
        assert caption.text == FINAL and caption.meta["fallback"] is None
        meta = caption.meta
        assert meta["objects"]["found"] == ["dog", "ball"]
        main = meta["main_region"]
        assert {m["object"] for m in main["matched"]} == {"dog", "ball"} and not main["whole_image"]
        names = [r["name"] for r in meta["regions"]]
        assert names[-4:] == ["top-left", "top-right", "bottom-left", "bottom-right"]
        assert all(r["caption"] for r in meta["regions"])
        assert [m["regions"] for m in meta["merges"]] == [["top-left", "top-right"], ["top-right", "bottom-right"],
                                                          ["bottom-left", "bottom-right"], ["top-left", "bottom-left"]]
        facts = " ".join(meta["facts"])
        assert "A dog stands on grass." in facts and "A fence is visible." in facts and "purple" not in facts
        for region in meta["regions"]:
            assert all(0 <= v <= 1 for v in region["box"])
    # one call per step for the whole batch
    assert stage.vlm.batch_sizes == [2, sum(len(s.captions["patch_matters"].meta["regions"]) for s in batch)]
    assert stage.detector.batch_sizes == [2]
    assert stage.llm.batch_sizes == [2, 8, 2]  # objects, 4 merges × 2 images, final
    # neighbours' descriptions and the global caption reach the LLM only inside delimiters
    merge_prompt = next(p for p in stage.llm.prompts if "Sort what they say" in p)
    assert merge_prompt.count("<caption>") == 2


def test_no_match_uses_the_whole_image_and_small_crops_are_skipped_with_the_reason():
    cfg = config(detector={"type": "fake", "absent": ["dog", "ball"]}, min_region_px=64)
    stage, batch = run_stage(cfg, samples(1, GLOBAL, size=(100, 80)))
    meta = batch[0].captions["patch_matters"].meta
    assert meta["main_region"]["whole_image"] and meta["main_region"]["box"] == [0.0, 0.0, 1.0, 1.0]
    assert [r["name"] for r in meta["regions"]] == ["top-left", "top-right", "bottom-left", "bottom-right"]  # main ≈ image
    assert all(r["skipped"] == "crop of 50×40 px is below min_region_px=64" for r in meta["regions"])
    assert batch[0].captions["patch_matters"].text == GLOBAL and meta["fallback"] == "no_region_facts"
    assert stage.vlm.batch_sizes == [1]  # no crop was worth describing


def test_detector_failure_costs_only_that_sample():
    batch = samples(2, GLOBAL, size=(160, 120)) + samples(1, GLOBAL, size=(20, 20))
    batch[2].key = "tiny"
    stage, batch = run_stage(config(detector={"type": "fake", "fail_below_px": 30}), batch)
    assert [s.status for s in batch] == ["ok", "ok", "stage_error"]
    assert batch[2].error.startswith("patch_matters: detector: image of 20×20 px")
    assert "patch_matters" not in batch[2].captions


def test_unparsed_merges_add_nothing_and_are_recorded():
    cfg = config(llm={"type": "fake", "script": [{"when": "List the things", "answer": "dog"},
                                                 {"when": "Rewrite the caption", "answer": FINAL}]})
    stage, batch = run_stage(cfg, samples(1, GLOBAL, size=(160, 120)))
    meta = batch[0].captions["patch_matters"].meta
    assert all(m["failed"] == "unparsed" and m["attempts"] == 2 for m in meta["merges"])
    assert [f for f in meta["facts"] if "dog stands" in f] == []
    assert stage.llm.batch_sizes[:3] == [1, 4, 4]  # objects, merges, the merges once more


def test_unparsed_objects_mean_the_whole_image():
    cfg = config(llm={"type": "fake", "script": [
        {"when": "List the things", "answer": "I think this photo is about a very happy dog in the sun"},
        {"when": "Sort what they say", "answer": MERGE}, {"when": "Rewrite the caption", "answer": FINAL}]})
    stage, batch = run_stage(cfg, samples(1, GLOBAL, size=(160, 120)))
    meta = batch[0].captions["patch_matters"].meta
    assert meta["objects"]["failed"] == "unparsed" and meta["main_region"]["whole_image"]
    assert batch[0].captions["patch_matters"].text == FINAL
