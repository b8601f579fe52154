"""A model step that fails transiently (a timeout, a 503 after every retry) is no verdict on the
caption: the verifying stages store nothing for that sample and mark it `transient_error`, so a
later run redoes it; a final failure falls back with the reason as before."""

from capmill.backends.base import Generation
from capmill.stages.base import RunContext
from capmill.stages.fusecap import FuseCapStageConfig
from capmill.stages.scalecap import ScaleCapStageConfig
from tests.stages.verify_util import samples


class Failing:
    """Wraps a backend; its `chat` answers every request with the given failure."""

    def __init__(self, inner, transient: bool):
        self.inner, self.transient, self.calls = inner, transient, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def chat(self, requests):
        self.calls += 1
        return [Generation(error="no answer within 120.0s", transient=self.transient) for _ in requests]


def _run(config, batch, transient):
    stage = config.build()
    stage.setup(RunContext())
    stage.llm = Failing(stage.llm, transient)
    stage.process(batch)
    return stage, batch


def test_transient_llm_failures_leave_the_sample_retryable():
    cfg = ScaleCapStageConfig(vlm={"type": "fake"}, llm={"type": "fake"}, analyzer={"type": "fake"}, caption="dsc")
    stage, batch = _run(cfg, samples(2, "A dog sits on the grass.", key="dsc"), transient=True)
    assert [s.status for s in batch] == ["transient_error"] * 2 and "scalecap" not in batch[0].captions
    assert batch[0].error.startswith("scalecap: objects: no_answer: no answer within")
    cfg = FuseCapStageConfig(caption="dsc", llm={"type": "fake"}, detector={"type": "fake"})
    stage, batch = _run(cfg, samples(2, "A dog.", key="dsc", size=(160, 120)), transient=True)
    assert [s.status for s in batch] == ["transient_error"] * 2 and "fusecap" not in batch[0].captions


def test_final_llm_failures_fall_back_with_the_reason():
    cfg = FuseCapStageConfig(caption="dsc", llm={"type": "fake"}, detector={"type": "fake"})
    stage, batch = _run(cfg, samples(1, "A dog.", key="dsc", size=(160, 120)), transient=False)
    caption = batch[0].captions["fusecap"]
    assert batch[0].ok and caption.text == "A dog." and caption.meta["fallback"] == "backend_error"
    assert caption.meta["error"] == "no answer within 120.0s" and stage.llm.calls == 1
