"""The chain check: every key a stage reads exists when it runs, before the run starts.

Each stage declares from its config what it reads and writes (`StageConfig.io`, in
`capmill.keys` terms). Walking the stages in order from what the input provides gives the keys
available at each point; a read that is not among them, a second stage writing a key an earlier
stage writes, or an `output.text_field` that nothing writes is a `ConfigError` naming the stage,
the key and what is available there. `capmill run` (local, Ray, `--dry-run`) calls
`check_chain` first thing, before anything is read, loaded or claimed.

What a run wrote is `written_keys(config)`, which `_run.json` records under `written`; a later
run reading that output (`input: {type: capmill}`) starts from it, and `capmill export` can check
its mix names against it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from capmill import keys
from capmill.errors import ConfigError
from capmill.keys import Key, StageIO
from capmill.suggest import did_you_mean

if TYPE_CHECKING:
    from capmill.components import StageConfig
    from capmill.config import RunConfig

log = logging.getLogger(__name__)

INPUT = "the input"


@dataclass(frozen=True)
class InputKeys:
    """What the input puts in every sample. `known` is False for an earlier capmill output whose
    `_run.json` says nothing usable about what it wrote: its captions and scores are then
    taken on trust."""

    keys: frozenset[Key]
    known: bool = True


@dataclass(frozen=True)
class Step:
    """One stage of a checked chain: what it declared, and what was available before it."""

    index: int
    stage: StageConfig
    io: StageIO
    before: frozenset[Key]


@dataclass(frozen=True)
class Chain:
    """A checked pipeline: what the input carries, each stage's step, what is there at the end."""

    carried: frozenset[Key]
    steps: list[Step]
    final: frozenset[Key]
    # What the output holds, as `_run.json` records it (see `written_keys`); None when the
    # input's own keys are unknown, so no later run mistakes a partial list for the whole.
    written: dict[str, list[str]] | None


def declared_io(stage: StageConfig, available: frozenset[Key], index: int) -> StageIO:
    """The stage's declaration, with a missing one reported as the config error it is."""
    try:
        io = stage.io(available)
    except (NotImplementedError, ConfigError) as e:
        raise ConfigError(f"stage {index} ({stage.display_name}): {e}") from None
    if not isinstance(io, StageIO):
        raise ConfigError(f"stage {index} ({stage.display_name}): io() returned {type(io).__name__}, not a StageIO")
    return io


def check_chain(config: RunConfig) -> Chain:
    """Check the whole pipeline of `config` and return it; raises `ConfigError` on the
    first read nothing provides, second writer of a key, or unwritten `output.text_field`."""
    provided = input_keys(config)
    if not provided.known:
        log.warning("input %s: its _run.json does not say what that run wrote; its captions and scores "
                    "are assumed present", getattr(config.input, "path", "?"))
    available = decoded(provided.keys, config)
    writer: dict[Key, str] = dict.fromkeys(available, INPUT)
    steps = []
    for i, stage in enumerate(config.stages):
        io = declared_io(stage, available, i)
        here = f"stage {i} ({stage.display_name})"
        for key in sorted(io.reads - available):
            if not provided.known and key.kind in (keys.CAPTION, keys.SCORE):
                continue
            raise ConfigError(f"{here} reads {key}, which no earlier stage writes and the input does not provide. "
                              + _available_hint(key, available, config))
        for key in sorted(io.writes):
            earlier = writer.get(key)
            if earlier is not None and earlier != INPUT:
                raise ConfigError(
                    f"{here} writes {key}, which {earlier} already writes: the second would silently overwrite "
                    f"the first. Give the later stage its own key (a `name:`, which scoring stages use as their "
                    f"key prefix, or its `key:` / `store_as:` setting), or remove one of them"
                )
            writer[key] = here
        steps.append(Step(i, stage, io, available))
        available = available | io.writes
    field = keys.text(config.output.text_field)
    # The default text field on data without AltText and without captions is an image-only copy,
    # not a mistake: there is no text to choose.
    nothing_to_choose = ("text_field" not in config.output.model_fields_set
                         and not any(k.kind == keys.CAPTION for k in available))
    if field not in available and (provided.known or field.kind == keys.FIELD) and not nothing_to_choose:
        raise ConfigError(f"output.text_field {config.output.text_field!r} names {field}, which no stage writes "
                          f"and the input does not provide. " + _available_hint(field, available, config))
    held = {k for k in available if k.kind != keys.FIELD}
    if keys.REGIONS in available:  # a record field a stage writes (region captions)
        held.add(keys.REGIONS)
    if keys.ALT_TEXT in provided.keys:
        held.add(keys.ALT_TEXT)
    # `image` in what a run wrote names the stored media member, an image, a video or audio.
    if keys.IMAGE in provided.keys and "webdataset" in config.output.writers:
        held.add(keys.IMAGE)
    return Chain(provided.keys, steps, available, keys.to_json(held) if provided.known else None)


def input_keys(config: RunConfig) -> InputKeys:
    """What the input provides, before decoding: the record fields its config says every sample
    carries (`InputConfig.provides`), or for an earlier capmill output, what that run wrote."""
    from capmill.readers import RunOutputInput

    source = config.input
    if isinstance(source, RunOutputInput):
        return earlier_run_keys(source.path)
    return InputKeys(source.provides())


def earlier_run_keys(path: str) -> InputKeys:
    """What the capmill output at `path` holds: its `_run.json` `written` list, or, for outputs
    written before runs recorded it, the keys its recorded config declares."""
    from capmill.config import parse_config
    from capmill.outputdir import OutputDir

    record = OutputDir(path).read_run()
    if record is None:
        raise ConfigError(f"input {path!r} is not a capmill output directory (no _run.json); run the earlier "
                          f"pipeline first, or point input.path at its output")
    if isinstance(record.get("written"), dict):
        return InputKeys(with_video(keys.from_json(record["written"])))
    try:
        return InputKeys(with_video(keys.from_json(written_keys(parse_config(record["config"])))))
    except (ConfigError, KeyError, TypeError) as e:
        log.debug("cannot derive what %s wrote from its recorded config: %s", path, e)
        return InputKeys(frozenset({keys.ALT_TEXT, keys.IMAGE}), known=False)


def with_video(found: frozenset[Key]) -> frozenset[Key]:
    """A stored media member (`image` in what a run wrote) may be a video or audio as well as an image."""
    return found | {keys.VIDEO, keys.AUDIO} if keys.IMAGE in found else found


def decoded(carried: frozenset[Key], config: RunConfig) -> frozenset[Key]:
    """Stages see a decoded `image` (`video`, `audio`) only when the input carries images (videos,
    audio) and their decoding is on."""
    off = ({keys.IMAGE} if not config.image.decode else set()) | ({keys.VIDEO} if not config.video.decode else set()) \
        | ({keys.AUDIO} if not config.audio.decode else set())
    return carried - off


def written_keys(config: RunConfig) -> dict[str, list[str]] | None:
    """What the output of `config` holds, as `_run.json` records it under `written`
    (`{"captions": [...], "scores": [...], "fields": [...]}`): every caption and score the input
    provided or a stage wrote, `alt_text` when the input has an AltText, and `image` when a tar
    writer stores the images. A function of the config alone (and, for a capmill input, of the
    earlier run's record); None when that record does not say what the earlier run wrote. It
    raises the chain check's errors."""
    return check_chain(config).written


def _available_hint(key: Key, available: frozenset[Key], config: RunConfig) -> str:
    text = f"Available at that point: {keys.describe(available)}."
    if key == keys.IMAGE:
        if not config.image.decode:
            text += " Images are not decoded (`image.decode: false`)."
        else:
            text += " The input is configured without images."
    elif key == keys.VIDEO:
        text += (" Videos are not decoded (`video.decode: false`)." if not config.video.decode
                 else " The input is configured without media.")
    elif key == keys.AUDIO:
        text += (" Audio is not decoded (`audio.decode: false`)." if not config.audio.decode
                 else " The input is configured without media.")
    elif key == keys.ALT_TEXT:
        text += " The input is configured without an AltText."
    else:
        text += did_you_mean(key.name, [k.name for k in available])
    return text
