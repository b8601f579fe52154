"""DreamLIP: the exported sentence pool equals the reference's split, and the sampler draws k per
call, afresh every epoch (zyf0619sjtu/DreamLIP `training/data.py`)."""

import json
import random

import pytest

from capmill.config import parse_config
from capmill.export import export_config, export_run
from capmill.export.dreamlip import SubCaptionSampler, draw, sentence_pool, split_sentences
from capmill.run import run
from tests.conftest import make_config


def test_split_is_the_references_on_fixed_texts():
    # Hand-worked from the reference's rule: re.split(r'\n|</s>|[.]'), strip, drop empties.
    text = "A dog runs on the beach. It is brown.\nThe sky is blue</s>Mr. Smith waves at 3.5 m. "
    assert split_sentences(text) == ["A dog runs on the beach", "It is brown", "The sky is blue", "Mr",
                                     "Smith waves at 3", "5 m"]
    assert split_sentences("...\n\n</s></s> .") == []
    # The pool concatenates the captions' pieces in caption order (short, then long, as listed).
    assert sentence_pool(["Short one.", "Long one. Second part\nthird"]) == [
        "Short one", "Long one", "Second part", "third"]


def test_draw_without_replacement_when_the_pool_allows_it():
    rng = random.Random(0)
    pool = [f"s{i}" for i in range(9)]
    subs = draw(pool, 6, rng)
    assert len(subs) == 6 and len(set(subs)) == 6 and set(subs) <= set(pool)
    small = draw(["a", "b"], 6, rng)
    assert len(small) == 6 and set(small) <= {"a", "b"}  # with replacement, as random.choices
    assert draw([], 6, rng) == []


def test_two_epochs_draw_different_subsets_and_a_seed_repeats_them():
    records = [{"alt_text": f"alt {i}", "sentences": [f"s{i}-{j}" for j in range(12)]} for i in range(5)]

    def epochs(seed):
        sampler = SubCaptionSampler(k=6, seed=seed)
        return [[sampler({"json": json.dumps(r)})["texts"] for r in records] for _ in range(2)]

    first, second = epochs(0)
    assert first != second  # a new draw every pass over the data
    for texts, record in zip(first, records):
        assert texts[0] == record["alt_text"]  # the raw caption is always trained on
        assert len(texts) == 7 and len(set(texts[1:])) == 6 and set(texts[1:]) <= set(record["sentences"])
    assert epochs(0) == [first, second] and epochs(1) != [first, second]
    with pytest.raises(ValueError):
        SubCaptionSampler(k=0)


def test_dreamlip_export_writes_the_whole_pool_and_webdataset_reads_it(tmp_path):
    import webdataset as wds

    from capmill.testing import write_webdataset

    write_webdataset(tmp_path / "data", shards=1, per_shard=5)
    cfg = make_config(tmp_path / "data", tmp_path / "out", stages=[
        {"type": "caption", "formats": ["ssc", "dsc_plus"], "backend": {"type": "fake", "words": 40}}])
    assert run(parse_config(cfg), progress=False).ok
    report = export_run(str(tmp_path / "out"), export_config("dreamlip", 0, ["mix.synthetic=[ssc, dsc_plus]"]),
                        str(tmp_path / "dl"))
    assert report.written == 5 and report.text_source == {"ssc+dsc_plus": 5}
    from capmill.readers.run_output import RunOutputInput

    reader = RunOutputInput(path=str(tmp_path / "out")).build()
    captions = {s.key: s for shard in reader.shards() for s in reader.read(shard)}
    sampler = SubCaptionSampler(k=6, seed=0)
    pipeline = wds.WebDataset(str(tmp_path / "dl" / "00000.tar"), shardshuffle=False).decode().map(sampler)
    seen = 0
    for sample in pipeline:
        record, source = sample["json"], captions[sample["__key__"]]
        assert record["sentences"] == sentence_pool([source.captions["ssc"].text, source.captions["dsc_plus"].text])
        assert record["sources"] == ["ssc", "dsc_plus"] and record["k"] == 6
        assert sample["txt"] == source.alt_text == sample["texts"][0] and len(sample["texts"]) == 7
        seen += 1
    assert seen == 5
