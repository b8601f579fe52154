"""The fuse stage: an LLM merges the AltText with a synthetic caption into a new caption.

CapsFusion (BAAI, CVPR 2024): the AltText carries real-world knowledge (names, places, brands)
in poor form; the synthetic caption is well formed but generic; an LLM writes one caption that
keeps the first's facts in the second's structure. Published settings, our defaults: 3 beams,
at most 80 new tokens, an input budget of 256 tokens over the whole prompt counted with the LLM's
own tokenizer, the AltText truncated first (`capmill.text.prompt_budget`). VeCLIP
(Apple, ECCV 2024) uses the same stage with its own template: the AltText rewritten with the
visual concepts of a short caption.

Every output passes the output guards (`capmill.guards`: the checks every generated text
passes, plus the fusion checks of `capmill.guards.fuse`) before it is stored. Rejected outputs
of a batch are asked for again together (`guards.regenerate` rounds, one call each); one still
rejected falls back to the better input (the caption, unless configured otherwise) and the
reason is recorded in `meta["fallback"]`, which the run's stats count per caption key, with
every rejected text and its reasons in `meta["guards"]`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from capmill import keys
from capmill.backends.base import ChatRequest, GenerationParams, LanguageModel
from capmill.components import BackendSpec, StageConfig
from capmill.errors import ConfigError
from capmill.guards import GuardInput, OutputGuard
from capmill.guards.config import AUTO
from capmill.guards.fuse import FUSE_CHECKS, FuseGuardConfig
from capmill.guards.language import code_for, detect
from capmill.guards.rewrite import RewriteJob, clean_output, rewrite
from capmill.keys import Key, StageIO
from capmill.prompts import PromptTemplate, load_template
from capmill.prompts.safety import safe_alt_text, source_text, untrusted, without_untrusted
from capmill.sample import Caption, Sample
from capmill.stages.base import RunContext, Stage
from capmill.text.length import length_meta, token_counter
from capmill.text.prompt_budget import fit_inputs, fit_prompt, load_prompt_tokenizer

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
    # Input budget in tokens (CapsFusion's text_input_max_length: 256); the AltText is cut first.
    input_budget: int = Field(256, ge=16)
    # What the budget counts: "prompt", the whole prompt the LLM reads (chat template, instructions
    # and both inputs), as CapsFusion's reference does; "inputs", AltText + caption alone
    # (capmill's earlier rule, kept as an option).
    budget_scope: Literal["prompt", "inputs"] = "prompt"
    # Tokenizer of the count: "model" (the fusing LLM's own, as the reference; HTTP backends
    # cannot give it, so name it there), a transformers tokenizer name or folder, or "clip"
    # (CLIP's BPE, budget_scope: inputs only).
    budget_tokenizer: str = "model"
    # Language of the fused caption: "caption" (the synthetic caption's, usually English),
    # "alt_text" (the web page's), or a language name such as "German". The AltText itself is
    # always kept as it was.
    language: str = "caption"
    # The input kept when a guard rejects the output (or the LLM fails on a sample).
    prefer: Literal["caption", "alt_text"] = "caption"
    params: GenerationParams = Field(default_factory=_published_params)
    # Output guards; `language: auto` expects the language `language` asks for.
    guards: FuseGuardConfig = Field(default_factory=FuseGuardConfig)
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
        self.guard = OutputGuard(config.guards, extra=FUSE_CHECKS, stage="fuse")

    def _language_rule(self, language: str) -> str:
        rules = self.template.options.get("language", {})
        if language in ("caption", "alt_text"):
            if language not in rules:
                raise ConfigError(f"fuse template {self.template.prompt_id} has no options.language.{language} rule")
            return rules[language]
        return rules.get("named", "Write the result in {language}.").format(language=language)

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        cfg = self.config
        if cfg.budget_scope == "prompt" and cfg.budget_tokenizer == "clip":
            load_prompt_tokenizer("clip", None)  # raises the ConfigError that explains why
        self.backend = self.load_backend(cfg.backend, LanguageModel, "the fuse stage")
        self.prompt_tokens = None
        if cfg.budget_scope == "inputs" and cfg.budget_tokenizer == "clip":
            self.count = token_counter("clip")
        else:
            self.prompt_tokens = load_prompt_tokenizer(cfg.budget_tokenizer, self.backend)
            self.count = lambda text: len(self.prompt_tokens.encode(text))
        if cfg.budget_scope == "prompt":
            fixed = self.prompt_tokens.prompt_length(self.messages("", ""))
            if fixed >= cfg.input_budget:
                raise ConfigError(f"fuse: the {self.template.prompt_id} prompt takes {fixed} tokens without its "
                                  f"inputs, all of input_budget {cfg.input_budget}; raise input_budget or shorten "
                                  f"the template")

    def fit_budget(self, alt: str, caption: str) -> tuple[str, str, bool]:
        """The inputs within `input_budget`: over the whole prompt (`budget_scope: prompt`, as
        CapsFusion) or over AltText + caption (`inputs`); the AltText is cut first."""
        cfg = self.config
        if cfg.budget_scope == "prompt":
            alt_cut, caption, _ = fit_prompt(alt, caption, cfg.input_budget, self.prompt_tokens, self.messages)
        else:
            alt_cut, caption = fit_inputs(alt, caption, cfg.input_budget, self.count)
        return alt_cut, caption, alt_cut != alt

    def messages(self, alt: str, caption: str) -> list[dict[str, str]]:
        # Both inputs are untrusted: the caption may echo text from the image or the AltText.
        slots = {"alt_text": untrusted(alt, "alt_text", self.config.max_chars),
                 "caption": untrusted(caption, "caption", self.config.max_chars),
                 "language_rule": self.language_rule}
        system = self.template.render_system(**slots)
        user = self.template.render(**slots)
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]

    def expected_language(self, alt: str, caption: str) -> str | None:
        """The language code the guards expect of this fusion (None: not checked)."""
        if self.config.guards.language != AUTO:
            return self.config.guards.language
        if self.config.language == "caption":
            return detect(caption)
        if self.config.language == "alt_text":
            return detect(alt)
        return code_for(self.config.language)

    def process(self, batch: list[Sample]) -> list[Sample]:
        cfg = self.config
        jobs: list[RewriteJob] = []
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
            request = ChatRequest(messages=self.messages(alt_in, cap_in), params=cfg.params, tag=f"{sample.key}:{self.key}")
            prompt = without_untrusted("\n".join(m["content"] for m in request.messages))
            sources = {"alt_text": source_text(sample.alt_text, cfg.max_chars), "caption": cap_text}
            given = GuardInput(sources=sources, prompt=prompt, language=self.expected_language(alt, cap_text),
                               grounded=True)
            jobs.append(RewriteJob(sample, request, given, fallback=self._better(alt, cap_text),
                                   info={"caption": cfg.caption, "alt_text_truncated": cut}))
        # Every output passes the guards; the rejected ones of the batch are asked for again
        # together, and what is still rejected keeps the better input, saying why.
        for done in rewrite(self.backend, self.guard, jobs, self.key, clean=clean_output):
            self._store(done.job.sample, done.text, fallback=done.fallback, inputs=done.job.info,
                        rejected=done.rejected, error=done.error, backend_meta=done.backend_meta, guards=done.guards)
        return batch

    def _better(self, alt: str, caption: str) -> str:
        """The input kept when the fusion is rejected: `prefer`, unless that is an AltText that
        cannot stand in for a caption (it holds an instruction, a loop, markup or code)."""
        if self.config.prefer == "alt_text" and self.guard.stand_in_problem(alt) is None:
            return alt
        return caption

    def _store(self, sample: Sample, text: str, fallback: str | None = None, inputs: dict | None = None,
               rejected: str | None = None, error: str | None = None, backend_meta: dict | None = None,
               guards: dict | None = None) -> None:
        meta: dict = {**(backend_meta or {}), "fallback": fallback, "length": length_meta(text, None, 1, None)}
        if guards:
            meta["guards"] = guards
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

