"""Reading a run's output, checking the requested mix against it, and exporting it shard by shard
on the commit protocol (`capmill.export.outdir`)."""

from __future__ import annotations

import difflib
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from capmill.errors import ConfigError
from capmill.export.config import CHOSEN, ExportConfig
from capmill.export.mix import ALT_TEXT, DROP, TARGET_MIX
from capmill.export.outdir import ExportDir
from capmill.export.targets import EXPORTERS, REGIONS_ONLY
from capmill.outputdir import OutputDir, config_hash
from capmill.readers.run_output import RunOutputInput


@dataclass
class ExportReport:
    target: str
    samples: int = 0
    written: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason → samples
    text_source: Counter = field(default_factory=Counter)  # what was written, fallbacks named → samples
    synthetic: int = 0  # samples whose text holds a synthetic caption
    requested: dict[str, float] = field(default_factory=dict)  # source → share asked for
    notes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    shards_reused: int = 0
    seconds: float = 0.0

    def add(self, stats: dict[str, Any]) -> None:
        """Add one shard's counts (its commit record)."""
        self.samples += stats["samples"]
        self.written += stats["written"]
        self.synthetic += stats["synthetic"]
        self.skipped.update(stats["skipped"])
        self.text_source.update(stats["text_source"])
        self.files.extend(stats["outputs"])

    @property
    def degenerate(self) -> str | None:
        """Why the export is not what was asked for, when it is not: nothing written, or not one
        synthetic text although the mix asks for them."""
        asked = sum(v for k, v in self.requested.items() if k != ALT_TEXT)
        if self.samples and not self.written:
            return f"no sample was written ({', '.join(f'{k} {v}' for k, v in sorted(self.skipped.items()))})"
        if self.written and asked > 0 and self.synthetic == 0:
            return (f"the mix asks {100 * asked:.0f}% synthetic captions but not one sample had one: every text "
                    f"is the AltText")
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "samples": self.samples, "written": self.written,
                "skipped": dict(sorted(self.skipped.items())), "text_source": dict(sorted(self.text_source.items())),
                "synthetic": self.synthetic, "requested": self.requested, "notes": self.notes,
                "files": self.files, "shards_reused": self.shards_reused, "seconds": round(self.seconds, 3)}

    def render(self) -> str:
        lines = [f"export {self.target}: {self.written} of {self.samples} samples written in {self.seconds:.1f}s"
                 + (f" ({self.shards_reused} shard(s) already exported)" if self.shards_reused else "")]
        total = sum(self.text_source.values()) or 1
        lines.append(f"  {'text (realised mix)':<48}{'samples':>8}{'share':>8}{'asked':>8}")
        for name, n in sorted(self.text_source.items(), key=lambda kv: (-kv[1], kv[0])):
            asked = self.requested.get(name)
            lines.append(f"  {name:<48}{n:>8}{100 * n / total:>7.1f}%"
                         + (f"{100 * asked:>7.1f}%" if asked is not None else f"{'-':>8}"))
        for name, share in sorted(self.requested.items()):
            if name not in self.text_source:
                lines.append(f"  {name:<48}{0:>8}{0:>7.1f}%{100 * share:>7.1f}%")
        for reason, n in sorted(self.skipped.items()):
            lines.append(f"  skipped: {reason:<39}{n:>8}")
        lines.extend(f"  note: {note}" for note in self.notes)
        if self.degenerate:
            lines.append(f"  FAILED: {self.degenerate}")
        return "\n".join(lines)


def known_captions(run_out: str) -> set[str]:
    """The caption keys the run wrote: those its committed shards' records count (`_stats`), or,
    for an output whose records predate those counts, the `caption.NAME` columns of its parquet
    files (their schemas only) or the records of its first tar shard."""
    out = OutputDir(run_out)
    all_stats = out.all_stats()
    names: set[str] = set()
    for stats in all_stats:
        names.update((stats.get("captions") or {}).keys())
    if names or any("captions" in stats for stats in all_stats):
        return names
    import pyarrow.parquet as pq

    for stats in all_stats:
        parquet = f"{stats['shard']}.parquet"
        if parquet in stats.get("outputs", []):
            schema = pq.read_schema(os.path.join(run_out, parquet))
            names.update(c.removeprefix("caption.") for c in schema.names if c.startswith("caption."))
    if not names:
        reader = RunOutputInput(path=run_out).build()
        for shard in reader.shards()[:1]:
            for sample in reader.read(shard):
                names.update(sample.captions)
    return names


def resolve_mix(config: ExportConfig, run_record: dict[str, Any], known: set[str]) -> tuple[ExportConfig, list[str]]:
    """The mix with `@chosen` resolved and checked against the captions the run wrote.

    A name given on purpose (a `--set`, a recipe) that the run did not write is an error naming the
    captions it did; a name of the target's default table that is missing is left out with a note.
    A mix that asks for synthetic captions and has none left is refused: it would write the
    AltText under the synthetic caption's instruction or label.
    """
    mix = config.mix
    notes: list[str] = []
    wanted = list(mix.synthetic)
    defaults = wanted == TARGET_MIX[config.target].synthetic or wanted == [CHOSEN]
    if CHOSEN in wanted:
        chosen = (run_record.get("config") or {}).get("output", {}).get("text_field", ALT_TEXT)
        replacement = [chosen] if chosen != ALT_TEXT else [n for n in ("dsc", "dsc_plus") if n in known]
        notes.append(f"{CHOSEN} is the run's chosen caption (output.text_field: {chosen})"
                     + ("" if chosen != ALT_TEXT else f"; that is the AltText, so {replacement or ['dsc', 'dsc_plus']}"))
        wanted = [r for n in wanted for r in (replacement if n == CHOSEN else [n])] or ["dsc", "dsc_plus"]
    listing = ", ".join(sorted(known)) or "none"
    missing = [n for n in wanted if n not in known]
    if missing and not defaults:
        hints = [f"{n!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(n, known, 1)) else repr(n)
                 for n in missing]
        raise ConfigError(f"mix.synthetic names {', '.join(hints)}, which this run did not write; its captions are: "
                          f"{listing}")
    if mix.fallback not in (None, ALT_TEXT, DROP) and mix.fallback not in known:
        raise ConfigError(f"mix.fallback {mix.fallback!r} is not a caption this run wrote ({listing}); use "
                          f"alt_text, drop, or one of them")
    present = [n for n in wanted if n in known]
    if missing:
        notes.append(f"left out of the mix, not in this run: {', '.join(missing)}")
    if not present and (mix.p_synthetic > 0 or config.target == "dreamlip"):
        raise ConfigError(
            f"--target {config.target} draws {100 * mix.p_synthetic:.0f}% of its texts from "
            f"{', '.join(wanted)}, and this run wrote none of them (its captions: {listing}); every sample would "
            f"get its AltText instead. Caption those formats first, or name captions the run has: "
            f"--set 'mix.synthetic=[...]'")
    resolved = config.model_copy(update={"mix": mix.model_copy(update={"synthetic": present or wanted})})
    return resolved, notes


def export_run(run_out: str, config: ExportConfig, out: str, force: bool = False) -> ExportReport:
    """Export the run output in `run_out` for `config.target` into the folder `out`."""
    if os.path.abspath(out) == os.path.abspath(run_out):
        raise ConfigError("export --out must differ from the run output it reads")
    run_record = OutputDir(run_out).read_run()
    if run_record is None:
        raise ConfigError(f"{run_out!r} is not a capmill output directory (no _run.json)")
    written = run_record.get("written")
    if config.target == "grounding" and isinstance(written, dict) and "regions" not in written.get("fields", []):
        raise ConfigError(f"--target grounding exports region captions, and the run in {run_out!r} wrote none; add a "
                          f"regions stage to its pipeline (boxes from the record or a detector)")
    if config.bins is not None and isinstance(written, dict) and (config.bin_score or ALIGN_BIN) not in written.get("scores", []):
        raise ConfigError(f"bins keeps samples by scores[{config.bin_score or ALIGN_BIN!r}], which the run in {run_out!r} "
                          f"did not write (its scores: {', '.join(written.get('scores', [])) or 'none'}); run align_bin "
                          f"first, or name the score with bin_score")
    config, notes = resolve_mix(config, run_record, known_captions(run_out))
    reader = RunOutputInput(path=run_out).build()
    shards = reader.shards()
    exporter = EXPORTERS[config.target](config, out)
    settings = config.model_dump(mode="json")
    source = run_out if "://" in run_out else os.path.abspath(run_out)  # an object store URL stays one
    claim = {"config": settings, "source": source, "source_config_hash": run_record.get("config_hash"),
             "export_hash": config_hash({"config": settings, "source": run_record.get("config_hash")}),
             "files_outside_shards": exporter.files_outside_shards, "complete": False}
    folder = ExportDir(out)
    folder.claim(claim, force=force)
    report = ExportReport(config.target, requested=config.mix.requested() if config.target != "dreamlip" else {},
                          notes=notes)
    start = time.monotonic()
    done = folder.committed()
    for shard in shards:
        if shard.name in done:
            report.shards_reused += 1
            continue
        folder.commit(shard.name, _export_shard(exporter, reader, shard, config))
    committed = [s.name for s in shards if s.name in folder.committed()]
    for stats in folder.all_stats():
        report.add(stats)
    report.files.extend(exporter.finish(committed))
    report.seconds = time.monotonic() - start
    folder.finish({**claim, **report.to_dict(), "complete": True, "failed": report.degenerate})
    return report


ALIGN_BIN = "align_bin"


def in_bins(sample: Any, config: ExportConfig) -> bool:
    """Whether the sample's alignment bin is one the export keeps (a sample without one is not)."""
    value = sample.scores.get(config.bin_score or ALIGN_BIN)
    return value is not None and value == value and int(value) in config.bins


def _export_shard(exporter: Any, reader: Any, shard: Any, config: ExportConfig) -> dict[str, Any]:
    """Write one shard and return its commit record (written by the caller, after the outputs)."""
    counts: dict[str, Any] = {"samples": 0, "written": 0, "synthetic": 0, "skipped": Counter(), "text_source": Counter()}
    writer = exporter.open(shard.name)
    try:
        for sample in reader.read(shard):
            counts["samples"] += 1
            if config.only_ok and not sample.ok:
                counts["skipped"][f"status:{sample.status}"] += 1
                continue
            if config.bins is not None and not in_bins(sample, config):
                counts["skipped"][f"{config.bin_score or ALIGN_BIN} not in {sorted(config.bins)}"] += 1
                continue
            try:
                image = sample.image.read_bytes()
            except (OSError, ValueError):
                counts["skipped"]["no_image"] += 1
                continue
            draw = exporter.write(writer, sample, image, sample.image.ext or "jpg")
            if draw.dropped:
                counts["skipped"][draw.label] += 1
            elif not draw.source:
                counts["skipped"]["no_text"] += 1
            else:
                counts["written"] += 1
                counts["text_source"][draw.label] += 1
                counts["synthetic"] += draw.source not in (ALT_TEXT, REGIONS_ONLY)
        outputs = writer.commit()
    except BaseException:
        writer.abort()
        raise
    return {"shard": shard.name, **counts, "skipped": dict(counts["skipped"]),
            "text_source": dict(counts["text_source"]), "outputs": outputs}
