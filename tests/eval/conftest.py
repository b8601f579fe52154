"""A caption set with references, and one shared run of pycocoevalcap on it per session (the Java
metrics take seconds per run).

The set is generated programmatically, not taken from a dataset: 120 scenes each get five
reference sentences written from different templates over a seeded choice of subject, attribute,
action and place, so references agree on content and differ in wording as human references do.
Candidates paraphrase the scene, with some details wrong on purpose, so metric values spread out.
"""

import json
import shutil

import numpy as np
import pytest

SUBJECTS = ["dog", "cat", "man", "woman", "child", "horse", "bird", "car", "bicycle", "boat", "cow", "train"]
ATTRS = ["small", "large", "brown", "white", "black", "red", "old", "young", "wet", "striped"]
ACTIONS = ["sitting on", "running across", "standing near", "lying on", "walking along", "parked beside"]
PLACES = ["grass", "beach", "street", "table", "bench", "river", "road", "snow", "field", "platform"]
REF_TEMPLATES = [
    "A {a} {s} {v} the {p}.",
    "There is a {a} {s} {v} a {p}.",
    "The {s} is {v} the {p}, it looks {a}.",
    "{a} {s} {v} some {p} outside",
    "A photo of a {s} {v} the {p}",
]


def make_caption_set(n=120, seed=0):
    """keys, {key: [5 references]}, {field: {key: candidate}} for fields alt_text and dsc."""
    rng = np.random.default_rng(seed)
    keys, refs, alt, dsc = [], {}, {}, {}
    for i in range(n):
        s, a, v, p = (str(rng.choice(x)) for x in (SUBJECTS, ATTRS, ACTIONS, PLACES))
        key = f"{i:06d}"
        keys.append(key)
        refs[key] = [t.format(s=s, a=a, v=v, p=p).capitalize() for t in REF_TEMPLATES]
        wrong_p = str(rng.choice(PLACES)) if rng.random() < 0.4 else p
        dsc[key] = f"a {a} {s} that is {v} the {wrong_p} in daylight"
        alt[key] = f"{s} {p} photo {i}"
    return keys, refs, {"alt_text": alt, "dsc": dsc}


def write_coco_refs(path, refs, order=None):
    order = order if order is not None else sorted(refs)
    data = {
        "images": [{"id": k} for k in order],
        "annotations": [{"image_id": k, "id": j, "caption": c}
                        for j, (k, c) in enumerate((k, c) for k in order for c in refs[k])],
        "type": "captions", "info": {}, "licenses": [],
    }
    path.write_text(json.dumps(data))
    return path


def pycocoevalcap_direct(refs_path, res_path):
    """COCOEvalCap exactly as its README runs it (COCO + loadRes + evaluate), without SPICE,
    whose Stanford models are not installed offline: SPICE is the last scorer it runs, so
    stopping there leaves the other figures in `eval`."""
    import pycocoevalcap.eval as ev
    from pycocotools.coco import COCO

    class _StopAtSpice(Exception):
        pass

    class _NoSpice:
        def method(self):
            return "SPICE"

        def compute_score(self, gts, res):
            raise _StopAtSpice

    coco = COCO(str(refs_path))
    coco_res = coco.loadRes(str(res_path))
    evaluator = ev.COCOEvalCap(coco, coco_res)
    original, ev.Spice = ev.Spice, _NoSpice
    try:
        evaluator.evaluate()
    except _StopAtSpice:
        pass
    finally:
        ev.Spice = original
    return dict(evaluator.eval)


@pytest.fixture(scope="session")
def caption_set(tmp_path_factory):
    if shutil.which("java") is None:
        pytest.skip("Java is not installed (apt-get install default-jre-headless): the COCO metrics need it")
    root = tmp_path_factory.mktemp("coco")
    keys, refs, fields = make_caption_set()
    refs_path = write_coco_refs(root / "refs.json", refs)
    direct = {}
    for field, cands in fields.items():
        res_path = root / f"res_{field}.json"
        res_path.write_text(json.dumps([{"image_id": k, "caption": cands[k]} for k in sorted(cands)]))
        direct[field] = pycocoevalcap_direct(refs_path, res_path)
    return {"root": root, "keys": keys, "refs": refs, "fields": fields, "refs_path": refs_path, "direct": direct}
