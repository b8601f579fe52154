"""Natural language inference through transformers (`type: nli`): an EntailmentModel from any
sequence-classification checkpoint trained on MNLI-style labels.

    nli: {type: nli, model: FacebookAI/roberta-large-mnli}
    nli: {type: nli, model: models/deberta-v3-base-mnli, device: cuda}

The premise and the hypothesis are read as one pair (truncated to `max_tokens`, the premise
first); the three class probabilities are the softmax of the logits. Which logit is which class
comes from the checkpoint's `id2label` (names containing "entail", "neutral", "contradict", in
any case); a checkpoint whose labels do not name all three is refused at load. No NLI weights
ship with capmill or its dependencies: point `model` at a downloaded checkpoint.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from capmill.backends.base import Entailment
from capmill.components import BackendConfig
from capmill.errors import SetupError

CLASSES = ("entailment", "neutral", "contradiction")
_STEMS = {"entailment": "entail", "neutral": "neutral", "contradiction": "contradict"}


class NliConfig(BackendConfig):
    type: Literal["nli"] = "nli"
    model: str = "FacebookAI/roberta-large-mnli"
    revision: str | None = None
    device: str = "auto"
    batch_size: int = Field(32, ge=1)
    # Tokens per (premise, hypothesis) pair; longer premises are cut (the hypothesis is kept whole).
    max_tokens: int = Field(512, ge=16)

    def build(self) -> NliModel:
        return NliModel(self)

    def model_ids(self) -> list[str]:
        return [self.model]


def label_columns(id2label: dict[Any, str]) -> dict[str, int]:
    """class → logit index from a checkpoint's `id2label`; SetupError when a class is missing."""
    found: dict[str, int] = {}
    for index, name in id2label.items():
        for cls, stem in _STEMS.items():
            if stem in str(name).lower():
                found[cls] = int(index)
    missing = [c for c in CLASSES if c not in found]
    if missing:
        raise SetupError(f"the NLI model's labels {dict(id2label)} do not name {', '.join(missing)}; "
                         "use a checkpoint trained for entailment / neutral / contradiction (MNLI-style)")
    return found


class NliModel:
    """Implements EntailmentModel with `AutoModelForSequenceClassification`."""

    def __init__(self, config: NliConfig):
        self.config = config
        self.model_id = config.model
        self.model: Any = None

    def load(self) -> None:
        if self.model is not None:
            return
        from capmill.backends.availability import load_pretrained
        from capmill.backends.common import import_torch_stack, pick_device

        import_torch_stack()
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer, model = load_pretrained(self.config.model, self.config.revision, "NLI model", lambda path: (
            AutoTokenizer.from_pretrained(path), AutoModelForSequenceClassification.from_pretrained(path)))
        self.columns = label_columns(model.config.id2label)
        # Never more tokens than the model has positions for (nor than its tokenizer allows).
        limits = [self.config.max_tokens, getattr(model.config, "max_position_embeddings", None),
                  getattr(self.tokenizer, "model_max_length", None)]
        self.max_tokens = min(int(x) for x in limits if isinstance(x, int) and 0 < x < 10**6)
        self.device = pick_device(self.config.device)
        self.model = model.to(self.device).eval()

    def close(self) -> None:
        self.model = None

    def entail(self, pairs: list[tuple[str, str]]) -> list[Entailment]:
        import torch

        if self.model is None:
            raise SetupError(f"NLI model {self.model_id!r} used before load()")
        out: list[Entailment] = []
        size = self.config.batch_size
        for start in range(0, len(pairs), size):
            batch = pairs[start:start + size]
            try:
                inputs = self.tokenizer([p for p, _ in batch], [h for _, h in batch], truncation="only_first",
                                        max_length=self.max_tokens, padding=True, return_tensors="pt").to(self.device)
                with torch.inference_mode():
                    probs = torch.softmax(self.model(**inputs).logits.float(), dim=-1).cpu().numpy()
            except (RuntimeError, ValueError) as e:  # out of memory, a hypothesis longer than max_tokens
                out.extend(Entailment(None, None, None, error=f"{type(e).__name__}: {e}") for _ in batch)
                continue
            for row in probs:
                out.append(Entailment(*(float(row[self.columns[c]]) for c in CLASSES)))
        return out
