"""The worked example of ARCHITECTURE.md "Adding a stage", run as written: a `title` stage.

Test double: the stage lives here, not in capmill; it is registered for the test with
`registry.registered` instead of an entry point.
"""

import json
from typing import Literal

import pytest
from pydantic import Field

from capmill import keys, registry
from capmill.backends.base import ChatRequest, GenerationParams, LanguageModel
from capmill.components import BackendSpec, StageConfig
from capmill.config import parse_config
from capmill.errors import ConfigError
from capmill.guards import FALLBACK, GuardConfig, Guarded, GuardInput, OutputGuard, finish_reason, settle
from capmill.prompts import load_template, untrusted
from capmill.run import run
from capmill.sample import BACKEND_ERROR, Caption, Sample
from capmill.stages.base import RunContext, Stage
from tests.conftest import make_config

# --- the example, as ARCHITECTURE.md shows it ------------------------------------------------


class TitleStageConfig(StageConfig):
    type: Literal["title"] = "title"
    backend: BackendSpec  # any LanguageModel
    # The caption to title, and where the title goes.
    caption: str = "dsc"
    store_as: str = "title"
    # A YAML template with a {caption} slot (prompts are data, never strings in code).
    template: str
    params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=16))
    guards: GuardConfig = Field(default_factory=GuardConfig)
    max_words: int = Field(8, ge=1)

    def build(self) -> "TitleStage":
        return TitleStage(self)

    def io(self, available: frozenset[keys.Key]) -> keys.StageIO:
        return keys.StageIO(reads=[keys.caption(self.caption)], writes=[keys.caption(self.store_as)])

    def backend_roles(self) -> dict[str, type]:
        return {"backend": LanguageModel}


class TitleStage(Stage):
    config: TitleStageConfig

    def __init__(self, config: TitleStageConfig):
        super().__init__(config)
        # A bad template or guard setting fails when the stage is built, before any model loads.
        self.template = load_template("title", config.template).check_slots({"caption"})
        self.guard = OutputGuard(config.guards, extra={"too_long": self._too_long}, stage=self.name)

    def _too_long(self, text: str, given: GuardInput, cfg: GuardConfig) -> str | None:
        n = len(text.split())
        return f"{n} words" if n > self.config.max_words else None

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.backend = self.load_backend(self.config.backend, LanguageModel, "the title stage")

    def _request(self, sample: Sample, note: str = "") -> ChatRequest:
        # Untrusted text (here another model's caption) enters a prompt only through `untrusted`.
        prompt = self.template.render(caption=untrusted(sample.text(self.config.caption), "caption"))
        return ChatRequest(messages=[{"role": "user", "content": f"{prompt} {note}".strip()}],
                           params=self.config.params, tag=f"{sample.key}:{self.config.store_as}")

    def process(self, batch: list[Sample]) -> list[Sample]:
        cfg = self.config
        todo = [s for s in batch if s.text(cfg.caption)]
        items = []
        for sample, gen in zip(todo, self.backend.chat([self._request(s) for s in todo]), strict=True):
            if not gen.ok:  # one request failed: this sample's status, the batch goes on
                sample.fail(BACKEND_ERROR, f"{self.name}: {gen.error or 'no text'}")
                continue
            given = GuardInput(sources={"caption": sample.text(cfg.caption)}, finish=finish_reason(gen.meta))
            items.append(Guarded(gen.texts[0].strip(), given, owner=sample))
        # Every generated text passes the guards; the rejected ones are asked for again in one
        # backend call, and what still fails falls back to the caption's first words, saying why.
        failing = settle(self.guard, items, lambda again: self.backend.chat(
            [self._request(i.owner, self.guard.retry_note(i.verdict)) for i in again]))
        for item in items:
            sample, rejected = item.owner, item in failing
            text = " ".join(sample.text(cfg.caption).split()[: cfg.max_words]) if rejected else item.text
            sample.captions[cfg.store_as] = Caption(
                text=text, source=cfg.store_as, model=None if rejected else self.backend.model_id,
                prompt_id=self.template.prompt_id,
                meta={"fallback": item.verdict.reasons[0] if rejected else None,
                      "guards": item.meta(FALLBACK if rejected else None)})
        return batch


# --- the test -----------------------------------------------------------------------------------

TEMPLATE = """name: title
version: 1
template: |-
  Give this image description a title of at most eight words.

  {caption}

  Reply with the title alone.
"""


def test_the_worked_example_runs_and_is_checked(tmp_path, wds):
    template = tmp_path / "title.yaml"
    template.write_text(TEMPLATE)
    # Four good titles, four refusals, and the refusals again when they are asked for once more.
    answers = ["Red bicycle near the old wooden table"] * 4 + ["I'm sorry, I cannot help with that."] * 8
    stages = [{"type": "caption", "backend": {"type": "fake", "words": 20}, "formats": ["dsc"]},
              {"type": "title", "backend": {"type": "fake", "responses": answers}, "template": str(template)}]
    with registry.registered(registry.STAGES, TitleStageConfig):
        config = parse_config(make_config(tmp_path / "data", tmp_path / "out", stages=stages,
                                          executor={"type": "local", "batch_size": 8}))
        summary = run(config, progress=False, limit=8)
        assert summary.ok
        wrong = parse_config(make_config(tmp_path / "data", tmp_path / "o2", stages=[stages[1]]))
        with pytest.raises(ConfigError, match=r'stage 0 \(title\) reads captions\["dsc"\]'):
            run(wrong, progress=False)
    import pyarrow.parquet as pq

    records = [json.loads(r) for r in pq.read_table(tmp_path / "out" / "00000.parquet").column("record").to_pylist()]
    titles = [r["captions"]["title"] for r in records]
    assert [t["meta"]["fallback"] for t in titles] == [None] * 4 + ["refusal"] * 4
    assert titles[0]["text"] == "Red bicycle near the old wooden table" and titles[0]["meta"]["guards"] is None
    assert titles[5]["meta"]["guards"]["outcome"] == "fallback"
    assert [r["reasons"] for r in titles[5]["meta"]["guards"]["rejected"]] == [["refusal"]]  # then asked again
    assert titles[5]["text"] == " ".join(records[5]["captions"]["dsc"]["text"].split()[:8])
    assert json.loads((tmp_path / "out" / "_run.json").read_text())["written"]["captions"] == ["dsc", "title"]
