"""`refine`: an LLM merges the two best candidates into one caption, or improves the winner.

- `merge` — Bianco et al., "Improving Image Captioning Descriptiveness by Ranking and LLM-based
  Fusion" (2023; no public code): the two best-ranked captions are fused by an LLM into one that
  carries the details of both. The inputs are the first two entries of `meta["top"]` of the
  caption `caption` names (written by `rank` with `top_k >= 2`, or by `judge`), or that caption
  and the caption `second` names.
- `improve` — MLBCAP (multi-LLM collaborative captioning, 2025; no public code): the judge's
  winner is corrected and polished by an LLM, with the AltText as context when `alt_text` is on.

Delimiting and guards are those of `fuse` (CapsFusion): every input enters the prompt through
`untrusted`, the output passes the generic checks plus the fusion checks (`capmill.guards.fuse`:
in `merge` a copy of one input, the two pasted together, off topic, most of the second caption's
names and numbers lost; in `improve` the two pasted together and off topic — keeping the caption
as it was is an answer, and the AltText is context, not facts to carry), the rejected outputs of
a batch are asked for again together, and one still rejected falls back to the first input (the
best candidate) with the reason in `meta["fallback"]` — the same loop, `capmill.guards.rewrite`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from capmill import keys
from capmill.backends.base import ChatRequest, GenerationParams, LanguageModel
from capmill.components import BackendSpec, StageConfig
from capmill.errors import ConfigError
from capmill.guards import GuardInput, OutputGuard
from capmill.guards.config import AUTO
from capmill.guards.fuse import COPY, FUSE_CHECKS, LOST_ENTITIES, FuseGuardConfig
from capmill.guards.language import code_for, detect
from capmill.guards.rewrite import RewriteJob, clean_output, rewrite
from capmill.keys import Key, StageIO
from capmill.prompts import PromptTemplate, load_template
from capmill.prompts.safety import safe_alt_text, source_text, untrusted, without_untrusted
from capmill.sample import Caption, Sample
from capmill.stages.base import RunContext, Stage
from capmill.text.length import length_meta

SLOTS = {"caption", "second", "alt_text", "context", "language_rule"}
SINGLE = "single_candidate"


def _params() -> GenerationParams:
    # Bianco et al. publish no decoding settings: CapsFusion's (3 beams, 80 new tokens).
    return GenerationParams(max_new_tokens=80, num_beams=3, temperature=0.0)


class RefineStageConfig(StageConfig):
    type: Literal["refine"] = "refine"
    backend: BackendSpec
    mode: Literal["merge", "improve"] = "merge"
    # The caption to refine: merge takes its meta["top"][0:2] (from rank or judge) unless
    # `second` names the other input.
    caption: str = "ranked"
    second: str | None = None
    # improve: show the AltText as context (untrusted).
    alt_text: bool = True
    # Template (prompts/refine/): default the mode's own ("merge", "improve").
    template: str | None = None
    prompt_dirs: list[str] = Field(default_factory=list)
    # Key of the refined caption; default: the stage's name, else "refined".
    store_as: str | None = Field(None, min_length=1)
    # Language of the output: "caption" (the first input's) or a language name.
    language: str = "caption"
    params: GenerationParams = Field(default_factory=_params)
    guards: FuseGuardConfig = Field(default_factory=FuseGuardConfig)
    max_chars: int = Field(2000, ge=16)

    @model_validator(mode="after")
    def _defaults(self) -> RefineStageConfig:
        if self.store_as is None:
            self.store_as = self.name or "refined"
        if self.store_as in (self.caption, self.second):
            raise ValueError(f"refine: store_as {self.store_as!r} would overwrite its input; pick another key")
        if self.second is not None and self.mode != "merge":
            raise ValueError("`second` names merge's other input; improve refines one caption")
        return self

    def build(self) -> RefineStage:
        return RefineStage(self)

    def load(self) -> PromptTemplate:
        return load_template("refine", self.template or self.mode, self.prompt_dirs).check_slots(SLOTS)

    def io(self, available: frozenset[Key]) -> StageIO:
        reads = [keys.caption(self.caption)] + ([keys.caption(self.second)] if self.second else [])
        if self.mode == "improve" and self.alt_text:
            reads.append(keys.ALT_TEXT)
        return StageIO(reads=reads, writes=[keys.caption(self.store_as)])

    def backend_roles(self) -> dict[str, type]:
        return {"backend": LanguageModel}


class RefineStage(Stage):
    config: RefineStageConfig

    def __init__(self, config: RefineStageConfig):
        super().__init__(config)
        self.template = config.load()
        rules = self.template.options.get("language", {})
        if config.language == "caption":
            if "caption" not in rules:
                raise ConfigError(f"refine template {self.template.prompt_id} has no options.language.caption rule")
            self.language_rule = rules["caption"]
        else:
            self.language_rule = rules.get("named", "Write the result in {language}.").format(language=config.language)
        # In improve, the caption kept as it was is an answer, not a failure (no copy check), and
        # the AltText is context that may be wrong, not facts the output must carry (no lost-names
        # check); merge keeps every check, the second caption playing the AltText's part.
        skipped = {COPY, LOST_ENTITIES} if config.mode == "improve" else set()
        checks = {k: v for k, v in FUSE_CHECKS.items() if k not in skipped}
        self.guard = OutputGuard(config.guards, extra=checks, stage="refine")

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.backend = self.load_backend(self.config.backend, LanguageModel, "the refine stage")

    def inputs(self, sample: Sample) -> tuple[str, str | None, str | None]:
        """(first, second, why there is no second) for this sample; first is "" when missing."""
        cfg = self.config
        caption = sample.captions.get(cfg.caption)
        first = caption.text.strip() if caption is not None else ""
        if cfg.mode == "improve":
            return first, None, None
        if cfg.second is not None:
            second = sample.text(cfg.second)
            return first, (second or "").strip() or None, None if (second or "").strip() else "empty second caption"
        top = (caption.meta.get("top") or []) if caption is not None else []
        if len(top) < 2:
            return first, None, f"{cfg.caption} holds one candidate (rank it with top_k: 2 or more)"
        return (str(top[0].get("text", "")).strip() or first), str(top[1].get("text", "")).strip() or None, None

    def messages(self, first: str, second: str | None, alt: str | None) -> list[dict[str, str]]:
        cfg = self.config
        context = ""
        if alt:
            context = str(self.template.options.get("context", "{alt_text}")).format(
                alt_text=untrusted(alt, "alt_text", cfg.max_chars))
        slots = {"caption": untrusted(first, "caption", cfg.max_chars),
                 "second": untrusted(second, "caption", cfg.max_chars) if second else "",
                 "alt_text": untrusted(alt, "alt_text", cfg.max_chars) if alt else "",
                 "context": context, "language_rule": self.language_rule}
        system = self.template.render_system(**slots)
        return ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": self.template.render(**slots)}]

    def _language(self, first: str) -> str | None:
        cfg = self.config
        if cfg.guards.language != AUTO:
            return cfg.guards.language
        return detect(first) if cfg.language == "caption" else code_for(cfg.language)

    def process(self, batch: list[Sample]) -> list[Sample]:
        cfg = self.config
        jobs: list[RewriteJob] = []
        for sample in batch:
            first, second, missing = self.inputs(sample)
            if not first:
                continue  # nothing to refine: no caption is written (the chain made sure it exists)
            if cfg.mode == "merge" and second is None:
                self._store(sample, first, fallback=SINGLE, info={"why": missing})
                continue
            alt = safe_alt_text(sample.alt_text, cfg.max_chars) if cfg.mode == "improve" and cfg.alt_text else None
            request = ChatRequest(messages=self.messages(first, second, alt), params=cfg.params,
                                  tag=f"{sample.key}:{cfg.store_as}")
            # Merge reads two captions: the fusion checks see them as (second, first) — the
            # first is what the output must stay about (off topic), both are what it must not
            # copy or paste together. Improve shows the AltText, whose names must survive.
            sources = {"caption": first}
            if second is not None:
                sources["alt_text"] = second
            elif alt:
                sources["alt_text"] = source_text(sample.alt_text, cfg.max_chars)
            given = GuardInput(sources=sources, language=self._language(first), grounded=True,
                               prompt=without_untrusted("\n".join(m["content"] for m in request.messages)))
            info = {"mode": cfg.mode, "caption": cfg.caption, **({"second": second} if second else {})}
            jobs.append(RewriteJob(sample, request, given, fallback=first, info=info))
        for done in rewrite(self.backend, self.guard, jobs, cfg.store_as, clean=clean_output):
            self._store(done.job.sample, done.text, fallback=done.fallback, info=done.job.info, rejected=done.rejected,
                        error=done.error, guards=done.guards, backend_meta=done.backend_meta)
        return batch

    def _store(self, sample: Sample, text: str, fallback: str | None = None, info: dict | None = None,
               rejected: str | None = None, error: str | None = None, guards: dict | None = None,
               backend_meta: dict | None = None) -> None:
        meta: dict = {**(backend_meta or {}), "fallback": fallback, "length": length_meta(text, None, 1, None),
                      "inputs": info or {}}
        for name, value in (("rejected", rejected), ("error", error), ("guards", guards)):
            if value:
                meta[name] = value
        source = sample.captions.get(self.config.caption)
        sample.captions[self.config.store_as] = Caption(
            text=text, source=self.config.store_as,
            model=self.backend.model_id if fallback is None else (source.model if source else None),
            prompt_id=self.template.prompt_id, meta=meta)
