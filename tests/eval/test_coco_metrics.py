"""capmill's COCO metrics equal pycocoevalcap's COCOEvalCap run directly, to the last digit."""

import json

import pytest

from capmill.cli.main import main as cli
from capmill.eval.coco import COCO_NAMES, CocoScorers
from capmill.testing import items
from tests.eval.conftest import write_coco_refs

pytestmark = pytest.mark.slow  # end to end: the JVM (PTB tokenizer, METEOR) and the reference code


def parquet_of(path, keys, fields, drop=()):
    """A plain parquet of captions (no capmill run): key, image, caption (AltText), dsc column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    photos = list(items(len(keys), photos=False, size=(16, 16)))
    table = pa.table({
        "key": keys,
        "image": pa.array([p.data for p in photos], type=pa.binary()),
        "caption": [fields["alt_text"][k] for k in keys],
        "dsc": [None if k in drop else fields["dsc"][k] for k in keys],
    })
    pq.write_table(table, path)
    return path


@pytest.fixture(scope="module")
def capmill_result(caption_set, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = parquet_of(root / "captions.parquet", caption_set["keys"], caption_set["fields"])
    out = root / "result.json"
    code = cli(["eval", str(data), "--fields", "alt_text,dsc", "--references", str(caption_set["refs_path"]),
                "--skip", "clip,retrieval", "--json", str(out)])
    assert code == 0
    return json.loads(out.read_text())


def test_equals_cocoevalcap_to_the_last_digit(caption_set, capmill_result):
    assert len(caption_set["keys"]) >= 100 and all(len(r) == 5 for r in caption_set["refs"].values())
    for field in ("alt_text", "dsc"):
        direct = caption_set["direct"][field]
        assert set(direct) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"}
        for name, value in direct.items():
            assert capmill_result[field][COCO_NAMES[name]] == value, (field, name)
    # the metrics discriminate: the dense paraphrase beats the AltText on every one
    assert all(capmill_result["dsc"][m] > capmill_result["alt_text"][m] for m in ("BLEU-4", "CIDEr", "METEOR"))


def test_text_statistics_in_result(capmill_result):
    dsc = capmill_result["dsc"]
    assert dsc["captions"] == 120 and dsc["empty"] == 0
    assert dsc["template collapse"] > 0.1  # every dsc starts with "a ATTR SUBJECT that is"
    assert 10 <= dsc["words (mean)"] <= 14 and dsc["CLIP tokens (mean)"] > dsc["words (mean)"]


def test_bad_input_references_and_captions(caption_set, tmp_path, capsys):
    keys, refs, fields = caption_set["keys"], dict(caption_set["refs"]), caption_set["fields"]
    fields = {f: dict(v) for f, v in fields.items()}
    # references in another key order, some missing; an empty and a 10,000-word caption
    missing = set(keys[:7])
    shuffled = [k for k in reversed(keys) if k not in missing]
    refs_path = write_coco_refs(tmp_path / "refs.json", refs, order=shuffled)
    fields["dsc"][keys[10]] = ""
    fields["dsc"][keys[11]] = " ".join(["word"] * 10_000)
    data = parquet_of(tmp_path / "c.parquet", keys, fields, drop={keys[12]})
    out = tmp_path / "r.json"
    code = cli(["eval", str(data), "--fields", "dsc", "--references", str(refs_path), "--skip", "clip,retrieval",
                "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())["dsc"]
    err = capsys.readouterr().err
    assert "7 samples have no references" in err and "1 empty captions left out" in err
    assert "missing in 1 of 120 samples" in err
    from capmill.eval.coco import spice_available

    if not spice_available():
        assert "SPICE skipped" in err and "get_stanford_models" in err
    scorers = CocoScorers(spice=False)
    try:
        usable = [k for k in keys if k not in missing and k not in (keys[10], keys[12])]
        ref_tok = scorers.tokenize({k: refs[k] for k in usable})
        cand_tok = scorers.tokenize({k: [fields["dsc"][k]] for k in usable})
        expected = scorers.score(ref_tok, {k: v[0] for k, v in cand_tok.items()})
    finally:
        scorers.close()
    assert expected.scored == len(usable)
    for name, value in expected.corpus.items():
        assert result[name] == value, name
