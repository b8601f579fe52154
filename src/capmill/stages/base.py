"""The stage protocol: an optional `fit` once per run, `setup` in the worker, `process` on batches,
`teardown` at the end.

    fit(ctx, samples) -> state      once per run, before streaming, by the fit step (only when
                                    `needs_fit`); reads what `fit_request()` declares; the state
                                    is stored in OUT/_fit/ and reused by a resumed run
    setup(ctx)                      in every worker and Ray actor; `self.fit_state` holds the state
    process(batch) -> batch         on batches of the stream
    teardown()                      closes what setup loaded
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from capmill.errors import SetupError
from capmill.fit.request import FitRequest

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
    # Shared state of the stages in this process.
    state: dict[str, Any] = field(default_factory=dict)
    # The run's input config. Stages never read it: it names the fit a stage receives (the fit
    # key covers the input), and the fit step reads it (capmill.fit).
    input: Any = None
    # False when the run will discard what `out_dir` holds (--force over another config's
    # results): a stage must not build on those shards.
    resuming: bool = True
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("capmill"))
    # Fit states by fit key, when the caller hands them over in memory; otherwise `fitted`
    # reads them from OUT/_fit/.
    fits: dict[str, Any] = field(default_factory=dict)

    def fitted(self, stage: Stage) -> dict[str, Any]:
        """The state the fit step computed for `stage` in this run."""
        from capmill.fit.step import FIT_DIR, fit_key, load_fit

        key = fit_key(stage, self.input, self.seed)
        if key not in self.fits:
            state = load_fit(self.out_dir, key) if self.out_dir else None
            if state is None:
                where = f"{self.out_dir}/{FIT_DIR}/{key}.json" if self.out_dir else "RunContext.fits"
                raise SetupError(
                    f"stage {stage.config.type} needs the fit step's result ({where}), which does not exist: "
                    f"`capmill run` runs the fit step before streaming; a caller driving stages itself must "
                    f"run capmill.fit.run_fit_step (or put the state into RunContext.fits) first"
                )
            self.fits[key] = state
        return self.fits[key]


class Stage:
    """Base class for stages. Subclasses override `process` (whole batches) or `process_one`.

    The constructor takes the stage's config and does no heavy work: models load in `setup`,
    inside the worker that will use them. A per-sample problem becomes that sample's
    status/error (`Sample.fail`); an exception escaping `process` is treated by the executor as
    a failure of the batch, which it retries one sample at a time to find the culprit.
    A stage drops a sample by setting `status="dropped"` and `error` to the reason.

    A stage whose decisions depend on the whole input (bin edges, clusters, duplicate groups)
    sets `needs_fit`, declares what it must read in `fit_request` and computes a JSON-able state
    in `fit`. The fit step runs it once per run, before any worker starts, and every worker's
    `setup` receives the state as `self.fit_state`; no stage reads the input itself.
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

    @property
    def needs_fit(self) -> bool:
        """Whether the fit step must run `fit` for this stage before the run streams."""
        return False

    def fit_request(self) -> FitRequest:
        """What `fit` reads: input (default the run's), columns, images, how many samples."""
        return FitRequest()

    def fit(self, ctx: RunContext, samples: Iterator[Sample]) -> dict[str, Any]:
        """The whole-input state (JSON-serialisable), from the samples `fit_request` declared.
        Runs in the process that runs the fit step; models it loads there are closed after."""
        raise NotImplementedError(f"{type(self).__name__} sets needs_fit but implements no fit")

    def fit_summary(self, state: dict[str, Any]) -> str | None:
        """One line for the run summary about the fit (what it decided), or None."""
        return None

    def setup(self, ctx: RunContext) -> None:
        """Load models here, inside the worker. Subclasses call this first: it hands over the
        fit state (`self.fit_state`, None for stages without a fit)."""
        self.ctx = ctx
        self.fit_state = ctx.fitted(self) if self.needs_fit else None

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
