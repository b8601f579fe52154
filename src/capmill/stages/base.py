"""The stage protocol: `setup` in the worker, `process` on batches, `teardown` at the end."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from capmill.components import BackendConfig, Resources, StageConfig
    from capmill.media.image import ImageConfig
    from capmill.sample import Sample


@dataclass
class RunContext:
    """What a stage may know about the run it is part of."""

    out_dir: str | None = None
    image: ImageConfig | None = None
    seed: int = 0
    # Shared state a stage computed before the streaming pass (e.g. fitted bin edges).
    state: dict[str, Any] = field(default_factory=dict)
    # The run's input config, so a stage that must see the data before the streaming pass
    # (bin edges, clusters) can read it in `setup`; see capmill.fit.prepass.
    input: Any = None
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("capmill"))


class Stage:
    """Base class for stages. Subclasses override `process` (whole batches) or `process_one`.

    The constructor takes the stage's config and does no heavy work: models load in `setup`,
    inside the worker that will use them. A per-sample problem becomes that sample's
    status/error (`Sample.fail`); an exception escaping `process` is treated by the executor as
    a failure of the batch, which it retries one sample at a time to find the culprit.
    A stage drops a sample by setting `status="dropped"` and `error` to the reason.
    """

    def __init__(self, config: StageConfig):
        self.config = config
        self._backends: list[Any] = []

    @property
    def name(self) -> str:
        """Display name (timings, drop reasons): the config's `name`, else its `type`, numbered
        when an unnamed type repeats in a run (`filter`, `filter_2`)."""
        return self.config.display_name

    @property
    def resources(self) -> Resources:
        return self.config.resources

    def setup(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def process(self, batch: list[Sample]) -> list[Sample]:
        return [self.process_one(sample) for sample in batch]

    def process_one(self, sample: Sample) -> Sample:
        raise NotImplementedError(f"{type(self).__name__} implements neither process nor process_one")

    def load_backend(self, config: BackendConfig, protocol: type, role: str) -> Any:
        """Build and load a backend in the worker, checking it implements `protocol`; it is
        closed by `teardown`."""
        from capmill.backends.base import require

        backend = require(config.build(), protocol, role)
        backend.load()
        self._backends.append(backend)
        return backend

    def teardown(self) -> None:
        while self._backends:
            self._backends.pop().close()
