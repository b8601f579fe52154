"""`capmill eval` with the dense-caption metrics, end to end: on a capmill output and on a JSON-lines
file of captions; every metric name of `--json`, the history entry and its per-sample details, the
`--compare` arena of two fields and of two runs, and metrics whose model is missing skipped with
a note naming it. The judge, verifier, NLI model and text-to-image model are the fake backend with
scripted answers (a test double); the scene graphs come from the real offline spaCy parser."""

import json

import pytest
from PIL import Image

from capmill.cli.main import main as cli
from capmill.config import parse_config
from capmill.eval.history import DETAILS_DIR, load, load_details
from capmill.run import run
from capmill.testing import write_webdataset
from tests.conftest import make_config

NAMES = ["CAPTURE", "CAPTURE_object_F1", "CAPTURE_attribute_F1", "CAPTURE_relation_F1", "CHAIRi", "CHAIRs", "OpenCHAIR",
         "fact_precision", "fact_recall", "fact_F1", "TrueMatch_R@1_bag3", "CLIP-Image-Score", "facts_per_caption",
         "win_rate", "win_rate_ci_low", "win_rate_ci_high"]
JUDGE = ("{type: fake, script: ["
         "{when: 'list of primitive facts', answer: \"- a dog is there\\n- the car is red\"}, "
         "{when: 'List every concrete object', answer: \"- dog\\n- car\\n- kite\"}, "
         "{when: 'According to these descriptions, is there kite', answer: 'no'}, "
         "{when: 'According to these descriptions', answer: 'yes'}, "
         "{when: 'Verdict: tie', answer: \"The first one.\\nVerdict: 1\"}]}")
REFS = ["A dog is there next to a car.", "A brown dog sits near a parked car on the street."]


def _files(root, keys):
    (root / "refs.json").write_text(json.dumps({k: REFS for k in keys}))
    instances = {"images": [{"id": k} for k in keys], "categories": [{"id": 3, "name": "car"}, {"id": 18, "name": "dog"}],
                 "annotations": [{"image_id": k, "category_id": c, "id": i} for i, k in enumerate(keys) for c in (3, 18)]}
    (root / "instances.json").write_text(json.dumps(instances))


def _eval(path, *extra):
    return cli(["eval", str(path), "--scorer", "{type: fake}", "--bags", "3", "--truematch", "3",
                "--references", str(path.parent / "refs.json"), "--instances", str(path.parent / "instances.json"),
                "--skip", "coco,vdc", "--judge", JUDGE, "--verifier", "{type: fake, yes_if: [dog], no_if: [car]}",
                "--nli", "{type: fake}", "--t2i", "{type: fake}", *extra])


@pytest.mark.slow
def test_every_metric_on_a_run_output(tmp_path, capsys):
    write_webdataset(tmp_path / "data", shards=1, per_shard=6)
    out = tmp_path / "out"
    assert run(parse_config(make_config(tmp_path / "data", out)), progress=False).ok
    _files(tmp_path, [f"{i:06d}" for i in range(6)])
    assert _eval(out, "--compare", "ssc", "dsc", "--json", str(tmp_path / "e.json")) == 0
    printed = capsys.readouterr()
    metrics = json.loads((tmp_path / "e.json").read_text())
    for field in ("ssc", "dsc"):
        missing = [n for n in NAMES if n not in metrics[field]]
        assert not missing, (field, missing, printed.err)
    # the fake judge always prefers the caption shown first; positions were drawn per sample
    assert metrics["ssc"]["win_rate"] + metrics["dsc"]["win_rate"] == pytest.approx(1)
    assert metrics["ssc"]["fact_precision"] == 0.5  # "a dog is there" verified, "the car is red" not
    assert metrics["dsc"]["OpenCHAIR"] == pytest.approx(2 / 3)  # dog yes, car yes, kite no
    table = printed.out.splitlines()
    assert table[0].split() == ["metric", "ssc", "dsc"] and any(line.startswith("win_rate ") for line in table)
    # the history keeps the entry, and the per-sample details beside it
    entry = load(str(out))[-1]
    assert entry["compared_with"] == "out:ssc vs out:dsc" and entry["judge"] == "fake:fake"
    assert entry["metrics"]["dsc"]["CAPTURE"] == metrics["dsc"]["CAPTURE"]
    details = load_details(str(out), entry)
    assert (out / DETAILS_DIR / entry["details"]).is_file() and set(details) == {f"{i:06d}" for i in range(6)}
    sample = details["000000"]["dsc"]
    assert {"capture", "chair", "openchair", "facts", "arena", "clip_image_score"} <= set(sample)
    assert sample["openchair"]["hallucinated"] == ["kite"]
    assert [f["verdict"] for f in sample["facts"]["facts"]] == ["verified", "hallucinated"]
    positions = {details[k]["ssc"]["arena"]["position"] for k in details}
    assert positions == {1, 2}  # both orders drawn
    for k in details:
        a, b = details[k]["ssc"]["arena"], details[k]["dsc"]["arena"]
        assert a["position"] + b["position"] == 3 and {a["verdict"], b["verdict"]} == {"win", "loss"}
        assert (a["verdict"] == "win") == (a["position"] == 1)


def _jsonl(tmp_path, keys):
    rows = []
    for i, k in enumerate(keys):
        Image.new("RGB", (40, 30), (40 * i, 200 - 30 * i, 90)).save(tmp_path / f"{k}.png")
        rows.append({"key": k, "image_path": f"{k}.png", "alt_text": "photo",
                     "dsc": "A brown dog is there and the car is red, parked on the street.",
                     "ssc": "A dog and a teddy bear."})
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "captions.jsonl"


@pytest.mark.slow
def test_every_metric_on_a_jsonl_of_captions(tmp_path, capsys):
    keys = [f"im{i}" for i in range(5)]
    path = _jsonl(tmp_path, keys)
    _files(tmp_path, keys)
    assert _eval(path, "--compare", "ssc", "dsc", "--json", str(tmp_path / "e.json")) == 0
    metrics = json.loads((tmp_path / "e.json").read_text())
    assert not [n for n in NAMES if n not in metrics["dsc"]], capsys.readouterr().err
    dsc, ssc = metrics["dsc"], metrics["ssc"]
    # CHAIR: dsc names a dog and a car (both annotated); ssc a dog and a teddy bear (not there)
    assert (dsc["CHAIRi"], dsc["CHAIRs"]) == (0.0, 0.0) and (ssc["CHAIRi"], ssc["CHAIRs"]) == (0.5, 1.0)
    # facts: both reference facts are stated by dsc, only the dog by ssc (the fake NLI reads nouns)
    assert dsc["fact_recall"] == 1.0 and dsc["fact_F1"] == pytest.approx(2 / 3)
    assert ssc["fact_recall"] == 0.5 and ssc["fact_F1"] == 0.5
    assert dsc["CAPTURE"] > ssc["CAPTURE"] and dsc["facts_per_caption"] > ssc["facts_per_caption"]
    assert dsc["CLIP-Image-Score"] is not None
    assert not (tmp_path / "_eval.json").exists()  # a plain file of captions keeps no history


@pytest.mark.slow
def test_arena_between_two_runs_and_missing_models(tmp_path, capsys):
    keys = [f"im{i}" for i in range(4)]
    path = _jsonl(tmp_path, keys)
    _files(tmp_path, keys)
    other = tmp_path / "other"
    other.mkdir()
    (other / "captions.jsonl").write_text(path.read_text().replace("A dog and a teddy bear.", "A cat."))
    for k in keys:
        (other / f"{k}.png").write_bytes((tmp_path / f"{k}.png").read_bytes())
    rc = cli(["eval", str(path), "--compare", str(path), str(other / "captions.jsonl"), "--fields", "ssc",
              "--scorer", "{type: fake}", "--skip", "clip,retrieval,coco,vdc,capture,richness,facts,openchair",
              "--judge", JUDGE, "--json", str(tmp_path / "two.json")])
    assert rc == 0
    two = json.loads((tmp_path / "two.json").read_text())
    a, b = two[str(path)]["ssc"], two[str(other / "captions.jsonl")]["ssc"]
    assert a["win_rate"] == pytest.approx(1 - b["win_rate"]) and a["arena judged"] == 4
    capsys.readouterr()
    # models that cannot be loaded: the metric is skipped with a note naming the model; the rest runs
    rc = cli(["eval", str(path), "--fields", "dsc", "--references", str(tmp_path / "refs.json"),
              "--skip", "clip,retrieval,coco,vdc,openchair", "--parser", "{type: factual_t5, model: /nowhere/t5}",
              "--judge", "{type: fake}", "--nli", "{type: nli, model: /nowhere/nli}", "--json", str(tmp_path / "m.json")])
    err = capsys.readouterr().err
    assert rc == 0
    assert "CAPTURE (parser /nowhere/t5" in err and "facts_per_caption (scene-graph parser /nowhere/t5) skipped" in err
    assert "fact precision and recall (judge fake:fake, nli /nowhere/nli) skipped" in err
    m = json.loads((tmp_path / "m.json").read_text())["dsc"]
    assert "CAPTURE" not in m and "fact_precision" not in m and m["words (mean)"] > 0
