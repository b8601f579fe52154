"""The FACTUAL scene-graph parser (`type: factual_t5`): a T5 model that writes a caption's scene
graph as text, the parser CAPTURE publishes its scores with.

    parser: {type: factual_t5}                                        # lizhuang144/flan-t5-base-VG-factual-sg
    parser: {type: factual_t5, model: models/flan-t5-base-VG-factual-sg, device: cuda}

FACTUAL (Li et al., "FACTUAL: A Benchmark for Faithful and Consistent Textual Scene Graph
Parsing", Findings of ACL 2023) fine-tunes Flan-T5 to turn one sentence, read after the task
prefix the model was trained with, into tuples: "( car , is , red ) , ( car , on , road )".
A tuple `( x , is , y )` gives x the attribute y (a count when y is a number), `( x , r , y )` a
relation, a lone `( x )` an object. CAPTURE parses each sentence on its own (beam search, 5 beams,
at most 128 output tokens) and merges the sentences' graphs; so does this backend, with every
sentence of every text in one batched `generate` per `batch_size` sentences. Sentences are split
at . ! ? and newlines (`capmill.text.length.split_sentences`; CAPTURE uses NLTK's Punkt).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field

from capmill.backends.base import GraphEntity, GraphRelation, SceneGraph
from capmill.components import BackendConfig
from capmill.errors import SetupError

FACTUAL_MODEL = "lizhuang144/flan-t5-base-VG-factual-sg"
# The model's task prefix: the input format it was trained with.
TASK_PREFIX = "Generate Scene Graph: "
_TUPLE = re.compile(r"\(([^()]*)\)")


class FactualT5Config(BackendConfig):
    type: Literal["factual_t5"] = "factual_t5"
    model: str = FACTUAL_MODEL
    revision: str | None = None
    device: str = "auto"
    batch_size: int = Field(32, ge=1)
    # CAPTURE's decoding: 5 beams, 128 output tokens; inputs of at most 64 tokens (FACTUAL's default).
    num_beams: int = Field(5, ge=1)
    max_input_tokens: int = Field(64, ge=8)
    max_output_tokens: int = Field(128, ge=8)

    def build(self) -> FactualT5Parser:
        return FactualT5Parser(self)

    def model_ids(self) -> list[str]:
        return [self.model]


def parse_graph_text(text: str) -> SceneGraph:
    """The graph of one FACTUAL output string (see the module docstring). Malformed tuples are
    skipped; entity names are lower-cased and their spacing normalised."""
    graph = SceneGraph()
    index: dict[str, int] = {}

    def entity(name: str) -> int:
        if name not in index:
            index[name] = len(graph.entities)
            graph.entities.append(GraphEntity(head=name))
        return index[name]

    for body in _TUPLE.findall(text):
        parts = [" ".join(p.split()).lower() for p in body.split(",")]
        parts = [p for p in parts if p]
        if len(parts) == 1:
            entity(parts[0])
        elif len(parts) == 3:
            subject, relation, obj = parts
            s = entity(subject)
            if relation == "is":
                target = graph.entities[s]
                if obj.isdigit():
                    target.quantity = obj
                elif obj not in target.attributes:
                    target.attributes.append(obj)
            else:
                graph.relations.append(GraphRelation(s, relation, entity(obj)))
    return graph


def merge_graphs(graphs: list[SceneGraph]) -> SceneGraph:
    """One graph of several (a text's sentences): entities of the same name are one."""
    out = SceneGraph()
    index: dict[str, int] = {}
    for g in graphs:
        local = []
        for e in g.entities:
            if e.head not in index:
                index[e.head] = len(out.entities)
                out.entities.append(GraphEntity(head=e.head, quantity=e.quantity))
            merged = out.entities[index[e.head]]
            merged.attributes.extend(a for a in e.attributes if a not in merged.attributes)
            local.append(index[e.head])
        for r in g.relations:
            rel = GraphRelation(local[r.subject], r.relation, local[r.object])
            if rel not in out.relations:
                out.relations.append(rel)
    return out


class FactualT5Parser:
    """Implements SceneGraphParser with a FACTUAL checkpoint through transformers."""

    def __init__(self, config: FactualT5Config):
        self.config = config
        self.model_id = config.model
        self.model: Any = None
        self.tokenizer: Any = None

    def load(self) -> None:
        if self.model is not None:
            return
        from capmill.backends.availability import load_pretrained
        from capmill.backends.common import import_torch_stack, pick_device

        import_torch_stack()
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.tokenizer, model = load_pretrained(
            self.config.model, self.config.revision, "scene-graph parser",
            lambda path: (AutoTokenizer.from_pretrained(path), AutoModelForSeq2SeqLM.from_pretrained(path)),
            f"it must be a sequence-to-sequence model such as {FACTUAL_MODEL}")
        self.device = pick_device(self.config.device)
        self.model = model.to(self.device).eval()

    def close(self) -> None:
        self.model = None

    def parse(self, texts: list[str]) -> list[SceneGraph]:
        from capmill.text.length import split_sentences

        if self.model is None:
            raise SetupError(f"scene-graph parser {self.model_id!r} used before load()")
        sentences, owner = [], []
        for i, text in enumerate(texts):
            for sentence in split_sentences(text):
                sentences.append(sentence)
                owner.append(i)
        per_text: list[list[SceneGraph]] = [[] for _ in texts]
        errors: dict[int, str] = {}
        size = self.config.batch_size
        for start in range(0, len(sentences), size):
            batch = sentences[start:start + size]
            try:
                outputs = self._generate(batch)
            except RuntimeError as e:  # a device out of memory or a bad batch: those texts fail, the rest go on
                for i in owner[start:start + size]:
                    errors[i] = f"{type(e).__name__}: {e}"
                continue
            for i, text in zip(owner[start:start + size], outputs, strict=True):
                per_text[i].append(parse_graph_text(text))
        return [SceneGraph(error=errors[i]) if i in errors else merge_graphs(graphs)
                for i, graphs in enumerate(per_text)]

    def _generate(self, sentences: list[str]) -> list[str]:
        import torch

        cfg = self.config
        inputs = self.tokenizer([TASK_PREFIX + s for s in sentences], max_length=cfg.max_input_tokens, truncation=True,
                                padding="longest", return_tensors="pt").to(self.device)
        with torch.inference_mode():
            ids = self.model.generate(**inputs, num_beams=cfg.num_beams, max_length=cfg.max_output_tokens,
                                      early_stopping=cfg.num_beams > 1, do_sample=False,
                                      decoder_start_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
