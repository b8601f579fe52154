"""`capmill.Pipeline`: a run config as a Python object, run whole or applied to samples in memory.

    Pipeline.from_config("run.yaml", executor={"batch_size": 32}).run()   → RunSummary
    Pipeline.from_config({"stages": [...]}).process(samples)               → the samples, processed

`run` is `capmill run` (the CLI calls it); `process` runs the same decode step and the same
stages on a list of samples, with no input or output directory.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import Field

from capmill.components import StageSpec, Strict
from capmill.config import RunConfig, apply_overrides, format_validation_error, parse_config, set_path
from capmill.errors import ConfigError, DuplicateKeyError
from capmill.media.image import ImageConfig
from capmill.media.kinds import kind_of, sniff
from capmill.sample import ImageRef, Sample

if TYPE_CHECKING:
    from capmill.progress import RunSummary
    from capmill.stages.base import Stage


class StagesConfig(Strict):
    """A config without input and output: enough for `Pipeline.process`."""

    stages: list[StageSpec] = Field(default_factory=list)
    image: ImageConfig = Field(default_factory=ImageConfig)
    seed: int = 0


def _merge(tree: dict[str, Any], key: str, value: Any) -> None:
    """Keyword overrides: `a.b.c` sets one value; a mapping merges into the section it names."""
    if "." in key:
        set_path(tree, key, value)
    elif isinstance(value, dict) and isinstance(tree.get(key), dict):
        for k, v in value.items():
            _merge(tree[key], k, v)
    else:
        tree[key] = value


def as_sample(item: Any, key: str) -> Sample:
    """A Sample from a Sample, a PIL image, a path (str or os.PathLike; an http(s) URL becomes the
    image's `url`) or encoded bytes."""
    if isinstance(item, Sample):
        return item
    if isinstance(item, (bytes, bytearray, memoryview)):
        kind, ext = sniff(bytes(item))
        return Sample(key=key, image=ImageRef(data=bytes(item), ext=ext if kind not in (None, "image") else None, kind=kind or "image"))
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        ext = os.path.splitext(path)[1].lstrip(".").lower() or None
        kind = kind_of(ext) or "image"  # a video path (.mp4, …) is a video sample
        if path.startswith(("http://", "https://")):  # fetched as the readers fetch URLs
            return Sample(key=key, image=ImageRef(url=path, ext=ext, kind=kind), meta={"url": path})
        return Sample(key=key, image=ImageRef(path=path, ext=ext, kind=kind), meta={"path": path})
    if hasattr(item, "getexif") and hasattr(item, "size"):  # a PIL image, without importing PIL here
        return Sample(key=key, image=ImageRef(image=item))
    raise TypeError(f"cannot make a sample from {type(item).__name__}: pass a capmill.Sample, a PIL image, "
                    f"a path or encoded image bytes")


class Pipeline:
    """A validated run config. Stages used by `process` load on its first call and stay loaded
    until `close()` (or the end of a `with` block)."""

    def __init__(self, config: RunConfig | StagesConfig):
        self.config = config
        self._stages: list[Stage] | None = None
        self.seconds: dict[str, float] = {}

    @classmethod
    def from_config(cls, config: str | os.PathLike | dict[str, Any] | RunConfig | None = None, *,
                    recipe: str | None = None, set: Sequence[str] = (), **overrides: Any) -> Pipeline:
        """A config file, a dict, a RunConfig, or a packaged `recipe` by name; `set` takes the CLI's
        `KEY=VALUE` strings, keyword overrides take Python values (`executor={"batch_size": 32}`
        merges into the section, `**{"stages.0.backend.model": PATH}` sets one value). A dict
        without `input` and `output` makes a pipeline for `process` only."""
        if recipe is not None or config is None:
            from capmill.recipes import config_tree

            tree = config_tree(None, recipe, "Pipeline.from_config")
        elif isinstance(config, RunConfig):
            tree = config.model_dump(mode="json")
        elif isinstance(config, dict):
            tree = copy.deepcopy(config)
        elif isinstance(config, (str, os.PathLike)):
            from capmill.recipes import config_tree

            tree = config_tree(os.fspath(config), None, "Pipeline.from_config")
        else:
            raise TypeError(f"config must be a path, a dict or a RunConfig, not {type(config).__name__}")
        apply_overrides(tree, list(set))
        for key, value in overrides.items():
            _merge(tree, key, value)
        if "input" in tree or "output" in tree:
            return cls(parse_config(tree))
        from pydantic import ValidationError

        try:
            return cls(StagesConfig.model_validate(tree))
        except ValidationError as e:
            raise ConfigError(format_validation_error(e)) from None

    def run(self, *, force: bool = False, limit: int | None = None, dry_run: bool = False,
            retry_errors: bool = False, progress: bool = True, cooperate: bool = False,
            shard_index: int | None = None, num_shards: int | None = None) -> RunSummary:
        """`capmill run`: read the input, write the output directory (resuming a run of the same
        config), and return the summary (`summary.ok` is False when a shard failed).
        `cooperate`, `shard_index`/`num_shards`: share the output with other runs (see README,
        "Several processes, one output")."""
        if not isinstance(self.config, RunConfig):
            raise ConfigError("this pipeline has no input and output section: run() needs both "
                              "(use process(samples) to apply its stages in memory)")
        from capmill.run import Share, run

        tracker = None
        if self.config.tracking is not None and not dry_run:
            from capmill.outputdir import config_hash
            from capmill.tracking import open_tracker

            tracker = open_tracker(self.config.tracking, self.config.output.path,
                                   self.config.model_dump(mode="json"), config_hash(self.config.hashed_content()))
        summary = None
        try:
            summary = run(self.config, force=force, limit=limit, dry_run=dry_run, retry_errors=retry_errors,
                          progress=progress, listeners=[tracker.on_shard] if tracker else [],
                          share=Share(cooperate, shard_index, num_shards))
        finally:
            if tracker is not None:
                try:
                    tracker.finish(summary)
                except Exception as e:  # the data is written; say the tracker missed its end
                    if summary is None:  # the run's own error is the one to report
                        logging.getLogger("capmill").warning("tracking: could not close the tracker run: %s", e)
                    else:
                        summary.warnings.append(f"tracking ({self.config.tracking.type}): could not log the end "
                                                f"of the run: {type(e).__name__}: {e}")
        return summary

    def process(self, samples: Iterable[Any], *, batch_size: int | None = None) -> list[Sample]:
        """Decode (with the config's image hygiene) and run every stage on `samples`, in batches;
        returns them in order. Items may be Samples, PIL images, paths or bytes (keys "0", "1",
        … by position). A sample that fails keeps its place with `status` and `error` set."""
        from capmill.media.decode import decode_batch
        from capmill.pipeline import run_stages

        items = [as_sample(item, str(i)) for i, item in enumerate(samples)]
        seen: dict[str, int] = {}
        for i, sample in enumerate(items):
            if seen.setdefault(sample.key, i) != i:
                raise DuplicateKeyError(f"samples {seen[sample.key]} and {i} share the key {sample.key!r}; keys must be unique")
        stages = self._setup()
        size = batch_size or getattr(getattr(self.config, "executor", None), "batch_size", 16)
        out: list[Sample] = []
        for start in range(0, len(items), size):
            batch = items[start:start + size]
            self.seconds["decode"] = self.seconds.get("decode", 0.0) + decode_batch(batch, self.config.image)
            out.extend(run_stages(stages, batch, self.seconds))
        return out

    def _setup(self) -> list[Stage]:
        if self._stages is None:
            from capmill.stages.base import RunContext

            built = [cfg.build() for cfg in self.config.stages]
            # No output directory: process() works in memory and never touches a run's files.
            ctx = RunContext(out_dir=None, image=self.config.image, seed=self.config.seed,
                             input=getattr(self.config, "input", None))
            ready: list[Stage] = []
            try:
                for stage in built:
                    stage.setup(ctx)
                    ready.append(stage)
            except BaseException:
                for stage in ready:
                    stage.teardown()
                raise
            self._stages = built
        return self._stages

    def close(self) -> None:
        """Unload the models `process` loaded."""
        stages, self._stages = self._stages, None
        for stage in stages or []:
            stage.teardown()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        kinds = ", ".join(s.type for s in self.config.stages) or "no stages"
        where = f" {self.config.input.type} → {self.config.output.path}" if isinstance(self.config, RunConfig) else ""
        return f"Pipeline({kinds}{where})"
