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
from capmill.guards.fuse import GuardConfig, first_failure
from capmill.prompts import load_template
from capmill.prompts.safety import delimited_caption
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
        # A bad template fails when the stage is built, before any model loads.
        self.template = load_template("title", config.template).check_slots({"caption"})

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.backend = self.load_backend(self.config.backend, LanguageModel, "the title stage")

    def process(self, batch: list[Sample]) -> list[Sample]:
        cfg = self.config
        todo = [s for s in batch if s.text(cfg.caption)]
        requests = [ChatRequest(messages=[{"role": "user", "content": self.template.render(
                        caption=delimited_caption(s.text(cfg.caption)))}],
                                params=cfg.params, tag=f"{s.key}:{cfg.store_as}") for s in todo]
        for sample, gen in zip(todo, self.backend.chat(requests), strict=True):
            if not gen.ok:  # one request failed: this sample's status, the batch goes on
                sample.fail(BACKEND_ERROR, f"{self.name}: {gen.error or 'no text'}")
                continue
            caption = sample.text(cfg.caption)
            title = gen.texts[0].strip()
            # Generated text passes the guards before it is stored (those that fit a title: a few
            # words keep neither the AltText's names nor most of the caption's words); a rejected
            # one falls back to the caption's first words and says why.
            reason = first_failure(title, "", caption, cfg.guards, skip=frozenset({"lost_entities", "off_topic"}))
            if reason is None and len(title.split()) > cfg.max_words:
                reason = "too_long"
            text = title if reason is None else " ".join(caption.split()[: cfg.max_words])
            sample.captions[cfg.store_as] = Caption(
                text=text, source=cfg.store_as, model=self.backend.model_id if reason is None else None,
                prompt_id=self.template.prompt_id, meta={"fallback": reason})
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
    answers = ["Red bicycle near the old wooden table"] * 4 + ["I'm sorry, I cannot help with that."] * 4
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
    assert titles[0]["text"] == "Red bicycle near the old wooden table"
    assert titles[5]["text"] == " ".join(records[5]["captions"]["dsc"]["text"].split()[:8])
    assert json.loads((tmp_path / "out" / "_run.json").read_text())["written"]["captions"] == ["dsc", "title"]
