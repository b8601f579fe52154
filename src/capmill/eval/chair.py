"""CHAIR: how many of the COCO objects a caption names are not in the image.

Rohrbach, Hendricks et al., "Object Hallucination in Image Captioning" (EMNLP 2018); reference
implementation LisaAnne/Hallucination `utils/chair.py`, whose synonym table capmill ships
(`capmill/data/chair_synonyms.txt`, BSD 2-Clause, attribution in the file). A caption's words are
mapped to the 80 COCO categories through that table; the image's objects are the categories of
its instance annotations (`--instances`, COCO `instances` JSON keyed by sample key) and, as in the
reference, the categories its reference captions name (`--references`, when given).

- CHAIR-i = mentions of objects not in the image / all mentions of COCO objects (over the set);
- CHAIR-s = captions with at least one such mention / captions.

Both are hallucination rates: lower is better. Word handling follows the reference: lower-case,
plural words back to their singular, two-word names read as one ("hot dog", "teddy bear", "wine
glass"; also "home plate" and "train track", which would otherwise fire "plate"/"train"),
"baby"/"adult" + animal and "passenger" + jet/train read as the animal or vehicle (so a "baby
elephant" is no person), "bow tie" as tie, "toilet seat" as toilet, and "seat" does not fire chair
in a caption that mentions a toilet. Differences: words are split by a regular expression, not
NLTK's tokenizer; plurals are undone with a table of the plural forms of the synonym table's own
words rather than pattern.en's `singularize` (which turns "glass" into "glas" and "skis" into
"ski", so the reference never matches the category "skis").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from capmill.errors import ConfigError

_WORD = re.compile(r"[a-z]+")
# Compound names the reference reads as one word besides the table's own two-word names.
EXTRA_COMPOUNDS = {"home plate": "home plate", "train track": "train track", "bow tie": "tie", "toilet seat": "toilet"}
ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
VEHICLES = ("jet", "train")
_IRREGULAR = {"man": "men", "woman": "women", "person": "people", "child": "children", "mouse": "mice",
              "goose": "geese", "ox": "oxen", "foot": "feet", "tooth": "teeth", "policeman": "policemen",
              "gentleman": "gentlemen", "serviceman": "servicemen", "sheep": "sheep", "calf": "calves"}


@dataclass(frozen=True)
class Vocabulary:
    node: dict[str, str]  # word or phrase → its COCO category
    compounds: dict[str, str]  # two-word phrase → what it reads as
    singular: dict[str, str]  # plural form → singular


def plural_forms(word: str) -> set[str]:
    forms = {word + "s", word + "es"}
    if re.search(r"[^aeiou]y$", word):
        forms.add(word[:-1] + "ies")
    if word.endswith("fe"):
        forms.add(word[:-2] + "ves")
    elif word.endswith("f"):
        forms.add(word[:-1] + "ves")
    if word in _IRREGULAR:
        forms.add(_IRREGULAR[word])
    return forms


@cache
def vocabulary() -> Vocabulary:
    text = (resources.files("capmill.data") / "chair_synonyms.txt").read_text(encoding="utf-8")
    node: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        names = [" ".join(n.split()).lower() for n in line.split(",") if n.strip()]
        for n in names:
            node[n] = names[0]
    compounds = {n: n for n in node if len(n.split()) == 2}
    compounds.update(EXTRA_COMPOUNDS)
    for animal in ANIMALS:
        compounds[f"baby {animal}"] = compounds[f"adult {animal}"] = animal
    for vehicle in VEHICLES:
        compounds[f"passenger {vehicle}"] = vehicle
    words = {w for n in [*node, *compounds, *ANIMALS] for w in n.split()}
    singular: dict[str, str] = {}
    for w in sorted(words):
        for form in plural_forms(w):
            if form not in words:  # a word of the table is never rewritten ("skis", "glass")
                singular.setdefault(form, w)
    return Vocabulary(node=node, compounds=compounds, singular=singular)


def mentions(caption: str) -> list[tuple[str, str]]:
    """(word as read, COCO category) for every COCO object the caption names, in order."""
    vocab = vocabulary()
    words = [vocab.singular.get(w, w) for w in _WORD.findall(caption.lower())]
    joined, i = [], 0
    while i < len(words):
        pair = " ".join(words[i:i + 2])
        if i + 1 < len(words) and pair in vocab.compounds:
            joined.append(vocab.compounds[pair])
            i += 2
        else:
            joined.append(words[i])
            i += 1
    if "toilet" in joined and "seat" in joined:
        joined = [w for w in joined if w != "seat"]
    return [(w, vocab.node[w]) for w in joined if w in vocab.node]


def load_instances(path: str) -> dict[str, set[str]]:
    """COCO `instances` JSON → {sample key: COCO categories of its annotations}; every key listed
    in `images` is present (an image without annotations has no objects)."""
    from capmill.eval.data import read_json_file

    data = read_json_file(path, "instances")
    if not isinstance(data, dict) or not isinstance(data.get("categories"), list) or not isinstance(data.get("annotations"), list):
        raise ConfigError(f"instances {path!r}: expected COCO instances JSON with `categories`, `annotations` "
                          "(and `images`) lists")
    node = vocabulary().node
    names = {}
    for c in data["categories"]:
        if not isinstance(c, dict) or "id" not in c or not isinstance(c.get("name"), str):
            raise ConfigError(f"instances {path!r}: every category needs an id and a name")
        names[c["id"]] = node.get(" ".join(c["name"].lower().split()))
    if names and not any(names.values()):
        raise ConfigError(f"instances {path!r}: no category is one of the 80 COCO objects CHAIR knows")
    objects: dict[str, set[str]] = {str(im["id"]): set() for im in data.get("images") or [] if isinstance(im, dict) and "id" in im}
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or "category_id" not in ann:
            raise ConfigError(f"instances {path!r}: annotation {i} needs an image_id and a category_id")
        if ann["category_id"] not in names:
            raise ConfigError(f"instances {path!r}: annotation {i} names category {ann['category_id']!r}, which "
                              "is not in `categories`")
        found = objects.setdefault(str(ann["image_id"]), set())
        if names[ann["category_id"]]:
            found.add(names[ann["category_id"]])
    return objects


@dataclass
class ChairResult:
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    details: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


def chair(keys: list[str], texts: dict[str, list[str | None]], instances: dict[str, set[str]],
          references: dict[str, list[str]] | None = None) -> ChairResult:
    """CHAIR-i and CHAIR-s of every field (module docstring)."""
    result = ChairResult()
    truth: dict[str, set[str]] = {}
    for k in keys:
        if k in instances:
            truth[k] = set(instances[k])
            for ref in (references or {}).get(k, []):
                truth[k].update(node for _, node in mentions(ref))
    unknown = len(keys) - len(truth)
    if unknown:
        result.notes.append(f"CHAIR: {unknown} samples are not in the instances file (left out)")
    for name, column in texts.items():
        captions = mentioned = hallucinated = with_hallucination = 0
        for key, text in zip(keys, column, strict=True):
            if text is None or key not in truth:
                continue
            found = mentions(text)
            wrong = [(w, node) for w, node in found if node not in truth[key]]
            captions += 1
            mentioned += len(found)
            hallucinated += len(wrong)
            with_hallucination += bool(wrong)
            result.details.setdefault(key, {}).setdefault(name, {})["chair"] = {
                "mentioned": [w for w, _ in found], "hallucinated": [w for w, _ in wrong]}
        if not captions:
            continue
        result.metrics[name] = {"CHAIRi": hallucinated / mentioned if mentioned else 0.0,
                                "CHAIRs": with_hallucination / captions}
        if not mentioned:
            result.notes.append(f"{name}: no caption names a COCO object (CHAIRi is 0 by definition)")
    return result
