"""Reading a run's output and handing its samples to the target's exporter."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from capmill.errors import ConfigError
from capmill.export.config import ExportConfig
from capmill.export.mix import texts_of
from capmill.export.targets import EXPORTERS
from capmill.readers.run_output import RunOutputInput


@dataclass
class ExportReport:
    target: str
    samples: int = 0
    written: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason → samples
    text_source: Counter = field(default_factory=Counter)  # chosen text → samples
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "samples": self.samples, "written": self.written,
                "skipped": dict(sorted(self.skipped.items())), "text_source": dict(sorted(self.text_source.items())),
                "files": self.files, "seconds": round(self.seconds, 3)}

    def render(self) -> str:
        lines = [f"export {self.target}: {self.written} of {self.samples} samples written in {self.seconds:.1f}s"]
        total = sum(self.text_source.values()) or 1
        for name, n in sorted(self.text_source.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  text {name:<20}{n:>8}  {100 * n / total:5.1f}%")
        for reason, n in sorted(self.skipped.items()):
            lines.append(f"  skipped {reason:<17}{n:>8}")
        return "\n".join(lines)


def export_run(run_out: str, config: ExportConfig, out: str) -> ExportReport:
    """Export the run output in `run_out` for `config.target` into the folder `out`."""
    if os.path.abspath(out) == os.path.abspath(run_out):
        raise ConfigError("export --out must differ from the run output it reads")
    reader = RunOutputInput(path=run_out).build()
    shards = reader.shards()
    os.makedirs(out, exist_ok=True)
    exporter = EXPORTERS[config.target](config, out)
    report = ExportReport(config.target)
    start = time.monotonic()
    for shard in shards:
        exporter.begin_shard(shard.name)
        for sample in reader.read(shard):
            report.samples += 1
            if config.only_ok and not sample.ok:
                report.skipped[f"status:{sample.status}"] += 1
                continue
            if not texts_of(sample):
                report.skipped["no_text"] += 1
                continue
            image, ext = None, sample.image.ext or "jpg"
            if exporter.needs_image:
                try:
                    image = sample.image.read_bytes()
                except (OSError, ValueError):
                    report.skipped["no_image"] += 1
                    continue
            report.text_source[exporter.write(sample, image, ext)] += 1
            report.written += 1
        exporter.end_shard()
        report.files.extend(f for f in os.listdir(out) if f.startswith(shard.name))
    report.files.extend(exporter.close())
    report.seconds = time.monotonic() - start
    with open(os.path.join(out, "_export.json"), "w", encoding="utf-8") as f:
        json.dump({"source": os.path.abspath(run_out), "config": config.model_dump(mode="json"), **report.to_dict()},
                  f, indent=2, ensure_ascii=False)
    return report
