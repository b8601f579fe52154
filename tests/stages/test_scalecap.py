"""The scalecap stage on the fake backend: the filter drops what the image does not support, the
steps batch, unreadable answers and rejected captions fall back with the reason."""

from capmill.stages.scalecap import ScaleCapStageConfig
from tests.stages.verify_util import run_stage, samples, updated

CAPTION = "A brown dog sits on the grass, a unicorn flies above. A red ball lies nearby."
FINAL = "A brown dog sits on green grass beside a small red ball lying in the sunlight."


def config(**vlm):
    return ScaleCapStageConfig(
        vlm={"type": "fake", "unseen_words": ["unicorn", "flies", "above"], **vlm},
        llm={"type": "fake", "script": [{"when": "List the concrete", "answer": "dog\nred ball\ndog"},
                                        {"when": "Write one detailed caption", "answer": FINAL}]},
        analyzer={"type": "fake"}, caption="dsc_plus", max_questions=4)


def test_filtered_questioned_and_rewritten():
    stage, batch = run_stage(config(), samples(3, CAPTION))
    for sample in batch:
        assert sample.ok, sample.error
        caption = sample.captions["scalecap"]
        assert caption.text == FINAL and caption.meta["fallback"] is None and caption.model == "fake:fake"
        golden = caption.meta["golden"]
        assert [(c["text"], c["kept"]) for c in golden["clauses"]] == [
            ("A brown dog sits on the grass", True), ("a unicorn flies above", False), ("A red ball lies nearby", True)]
        assert golden["kept_sentences"] == ["A brown dog sits on the grass.", "A red ball lies nearby."]
        assert [q["object"] for q in caption.meta["questions"]] == ["dog", "red ball"]  # deduplicated
        assert all(q["detail"] and q["position"] for q in caption.meta["questions"])
    # every step hands over the whole batch: one call each, whatever the batch size
    assert stage.scorer is stage.vlm  # no scorer configured: the vlm rates too
    assert stage.vlm.batch_sizes == [3, 3 * 2 * 2]  # forced logits, then 2 objects × 2 questions × 3 images
    assert stage.llm.batch_sizes == [3, 3]  # objects, final
    assert stage.analyzer.batch_sizes == [3]
    # the final prompt holds only the kept sentences, delimited
    final_prompt = stage.llm.prompts[-1]
    assert "unicorn" not in final_prompt and "<caption>" in final_prompt


def test_max_questions_caps_objects_and_zero_skips_the_questions():
    cfg = updated(config(), **{"max_questions": 2})
    stage, batch = run_stage(cfg, samples(1, CAPTION))
    assert [q["object"] for q in batch[0].captions["scalecap"].meta["questions"]] == ["dog"]
    cfg = updated(config(), **{"max_questions": 0})
    stage, batch = run_stage(cfg, samples(1, CAPTION))
    assert batch[0].captions["scalecap"].meta["questions"] == [] and stage.llm.batch_sizes == [1]


def test_unparsed_objects_retry_once_then_fall_back_to_the_filtered_caption():
    cfg = updated(config(), **{"llm": {"type": "fake", "script": [
        {"when": "List the concrete", "answer": "The picture shows many lovely things that I would like to talk about"}]}})
    stage, batch = run_stage(cfg, samples(2, CAPTION))
    caption = batch[0].captions["scalecap"]
    assert batch[0].ok and caption.meta["fallback"] == "objects_unparsed" and caption.model is None
    assert caption.text == "A brown dog sits on the grass. A red ball lies nearby."
    assert caption.meta["objects"]["attempts"] == 2 and caption.meta["objects"]["failed"] == "unparsed"
    assert stage.llm.batch_sizes == [2, 2]  # the first ask and one retry, both batched; no final step


def test_rejected_final_caption_regenerated_once_then_falls_back():
    cfg = updated(config(), **{"llm": {"type": "fake", "script": [
        {"when": "List the concrete", "answer": "dog"},
        {"when": "Write one detailed caption", "answer": "I'm sorry, but I cannot describe this image."}]}})
    stage, batch = run_stage(cfg, samples(2, CAPTION))
    caption = batch[0].captions["scalecap"]
    assert caption.meta["fallback"] == "refusal" and caption.text == "A brown dog sits on the grass. A red ball lies nearby."
    assert caption.meta["guards"]["outcome"] == "fallback" and len(caption.meta["guards"]["rejected"]) == 2
    assert stage.llm.batch_sizes == [2, 2, 2]  # objects, final, one regeneration round


def test_the_caption_is_kept_whole_when_nothing_survives_and_a_missing_image_fails_alone():
    cfg = config(unseen_words=["brown", "dog", "sits", "grass", "unicorn", "flies", "above", "red", "ball", "lies",
                               "nearby"])
    batch = samples(2, CAPTION)
    batch[1].image.image = None
    stage, batch = run_stage(cfg, batch)
    assert batch[0].captions["scalecap"].meta["golden"]["kept_whole"] is True
    assert batch[1].status == "decode_error"


def test_second_filter_rates_the_answers():
    cfg = updated(config(), **{"second_filter": True})
    stage, batch = run_stage(cfg, samples(1, CAPTION))
    question = batch[0].captions["scalecap"].meta["questions"][0]
    assert set(question["second_filter"]) == {"detail", "position"}
    assert stage.vlm.batch_sizes == [1, 4, 4]  # rating, answers, answers rated (one call)


def test_writes_its_own_first_caption_when_given_none():
    cfg = updated(config(), **{"caption": None})
    stage, batch = run_stage(cfg, samples(2))
    caption = batch[0].captions["scalecap"]
    assert batch[0].ok and caption.meta["input"] == "generated" and caption.meta["first_caption"]
    assert ScaleCapStageConfig.model_validate(cfg.model_dump()).io(frozenset()).reads == {
        __import__("capmill.keys", fromlist=["IMAGE"]).IMAGE}
