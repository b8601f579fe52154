"""The fuse stage: an LLM merges the AltText with a synthetic caption into a new caption.

CapsFusion (BAAI, CVPR 2024): the AltText carries real-world knowledge (names, places, brands)
in poor form; the synthetic caption is well formed but generic; an LLM writes one caption that
keeps the first's facts in the second's structure. Published settings, our defaults: 3 beams,
at most 80 new tokens, an input budget of 256 tokens with the AltText truncated first. VeCLIP
(Apple, ECCV 2024) uses the same stage with its own template: the AltText rewritten with the
visual concepts of a short caption.

Every output passes the guards of `capmill.guards.fuse` before it is stored; a rejected output falls
back to the better input (the caption, unless configured otherwise) and the reason is recorded
in `meta["fallback"]`, which the run's stats count per caption key.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from capmill import keys
from capmill.backends.base import ChatRequest, GenerationParams, LanguageModel
from capmill.components import BackendSpec, StageConfig
from capmill.errors import ConfigError
from capmill.keys import Key, StageIO
from capmill.prompts import PromptTemplate, load_template
from capmill.prompts.safety import delimited, delimited_caption, safe_alt_text
from capmill.sample import BACKEND_ERROR, Caption, Sample
from capmill.stages.base import RunContext, Stage
from capmill.text.length import length_meta, token_counter, truncate_to
from capmill.guards.fuse import GuardConfig, first_failure

FUSE_SLOTS = {"alt_text", "caption", "language_rule"}
EMPTY_ALT_TEXT, NO_CAPTION = "empty_alt_text", "no_caption"


def _published_params() -> GenerationParams:
    # CapsFusion decodes with 3 beams and at most 80 new tokens. Chat backends that cannot
    # beam-search (HTTP servers) decode greedily and say so in their docs.
    return GenerationParams(max_new_tokens=80, num_beams=3, temperature=0.0)


class FuseStageConfig(StageConfig):
    type: Literal["fuse"] = "fuse"
    backend: BackendSpec
    # Fusion template: a built-in name (`capsfusion`, `veclip`) or a path to your own YAML.
    template: str = "capsfusion"
    prompt_dirs: list[str] = Field(default_factory=list)
    # The caption fused with the AltText (a key of `captions`, e.g. "dsc" or "ssc").
    caption: str = "dsc"
    # Key of the fused caption; default: the template's name (captions["capsfusion"]).
    store_as: str | None = None
    # Input budget in tokens for AltText + caption together; the AltText is cut first.
    input_budget: int = Field(256, ge=16)
    # Tokenizer counting the budget: "clip" (CLIP's BPE, close to most LLM BPEs for English)
    # or a transformers tokenizer name/path, e.g. the fusion model's own.
    budget_tokenizer: str = "clip"
    # Language of the fused caption: "caption" (the synthetic caption's, usually English),
    # "alt_text" (the web page's), or a language name such as "German". The AltText itself is
    # always kept as it was.
    language: str = "caption"
    # The input kept when a guard rejects the output (or the LLM fails on a sample).
    prefer: Literal["caption", "alt_text"] = "caption"
    params: GenerationParams = Field(default_factory=_published_params)
    guards: GuardConfig = Field(default_factory=GuardConfig)
    # Characters of each input allowed into the prompt before the token budget applies.
    max_chars: int = Field(2000, ge=16)

    def build(self) -> FuseStage:
        return FuseStage(self)

    def load(self) -> PromptTemplate:
        return load_template("fuse", self.template, self.prompt_dirs).check_slots(FUSE_SLOTS)

    def fused_key(self) -> str:
        return self.store_as or self.load().name

    def io(self, available: frozenset[Key]) -> StageIO:
        return StageIO(reads=[keys.caption(self.caption), keys.ALT_TEXT], writes=[keys.caption(self.fused_key())])

    def backend_roles(self) -> dict[str, type]:
        return {"backend": LanguageModel}


class FuseStage(Stage):
    config: FuseStageConfig

    def __init__(self, config: FuseStageConfig):
        super().__init__(config)
        self.template = config.load()
        self.key = config.store_as or self.template.name
        if self.key == config.caption:
            raise ConfigError(f"fuse: store_as {self.key!r} would overwrite its input caption; pick another key")
        self.language_rule = self._language_rule(config.language)

    def _language_rule(self, language: str) -> str:
        rules = self.template.options.get("language", {})
        if language in ("caption", "alt_text"):
            if language not in rules:
                raise ConfigError(f"fuse template {self.template.prompt_id} has no options.language.{language} rule")
            return rules[language]
        return rules.get("named", "Write the result in {language}.").format(language=language)

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.count = token_counter(self.config.budget_tokenizer)
        self.backend = self.load_backend(self.config.backend, LanguageModel, "the fuse stage")

    def fit_budget(self, alt: str, caption: str) -> tuple[str, str, bool]:
        """Cut the AltText first, then the caption, so both fit `input_budget` tokens together."""
        budget = self.config.input_budget
        cap_tokens = self.count(caption)
        alt_cut = truncate_to(alt, max(budget - cap_tokens, 0), self.count)
        if not alt_cut:
            caption = truncate_to(caption, budget, self.count)
        return alt_cut, caption, alt_cut != alt

    def messages(self, alt: str, caption: str) -> list[dict[str, str]]:
        slots = {"alt_text": delimited(alt, self.config.max_chars),
                 "caption": delimited_caption(caption, self.config.max_chars),
                 "language_rule": self.language_rule}
        system = self.template.render_system(**slots)
        user = self.template.render(**slots)
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]

    def process(self, batch: list[Sample]) -> list[Sample]:
        cfg = self.config
        requests: list[ChatRequest] = []
        owners: list[tuple[Sample, str, str, bool]] = []
        for sample in batch:
            caption = sample.captions.get(cfg.caption)
            cap_text = caption.text.strip() if caption else ""
            alt = safe_alt_text(sample.alt_text, cfg.max_chars)
            if not cap_text:
                if alt:
                    self._store(sample, alt, fallback=NO_CAPTION)
                continue
            if not alt:
                self._store(sample, cap_text, fallback=EMPTY_ALT_TEXT)
                continue
            alt_in, cap_in, cut = self.fit_budget(alt, cap_text)
            requests.append(ChatRequest(messages=self.messages(alt_in, cap_in), params=cfg.params,
                                        tag=f"{sample.key}:{self.key}"))
            owners.append((sample, alt, cap_text, cut))
        if not requests:
            return batch
        for (sample, alt, cap_text, cut), gen in zip(owners, self.backend.chat(requests), strict=True):
            better = cap_text if cfg.prefer == "caption" else alt
            inputs = {"caption": cfg.caption, "alt_text_truncated": cut}
            if not gen.ok:
                self._store(sample, better, fallback=BACKEND_ERROR, inputs=inputs, error=gen.error or "no text")
                continue
            output = clean_output(gen.texts[0])
            reason = first_failure(output, alt, cap_text, cfg.guards)
            if reason is None:
                self._store(sample, output, inputs=inputs, backend_meta=gen.meta)
            else:
                self._store(sample, better, fallback=reason, inputs=inputs, rejected=output)
        return batch

    def _store(self, sample: Sample, text: str, fallback: str | None = None, inputs: dict | None = None,
               rejected: str | None = None, error: str | None = None, backend_meta: dict | None = None) -> None:
        meta: dict = {**(backend_meta or {}), "fallback": fallback, "length": length_meta(text, None, 1, None)}
        if inputs:
            meta["inputs"] = inputs
        if rejected is not None:
            meta["rejected"] = rejected
        if error is not None:
            meta["error"] = error
        sample.captions[self.key] = Caption(
            text=text, source=self.key,
            model=self.backend.model_id if fallback is None else None,
            prompt_id=self.template.prompt_id, meta=meta,
        )


def clean_output(text: str) -> str:
    """The caption without surrounding whitespace, quotes, or a leading label the LLM added."""
    text = text.strip()
    for label in ("caption:", "fused caption:", "new caption:", "rewritten caption:"):
        if text.lower().startswith(label):
            text = text[len(label):].strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'“”":
        text = text[1:-1].strip()
    return text
