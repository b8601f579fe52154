"""`capmill export --target llava_video`: video-LLM training data in the LLaVA layout.

    OUT/videos/KEY.EXT          the video, or the clip for clip samples (its own bytes)
    OUT/llava_video.json        [{"id", "video": "videos/KEY.EXT", "text_source",
                                  "conversations": [{"from": "human", "value": "<video>\\n…"},
                                                    {"from": "gpt", "value": CAPTION}]}, …]

The caption is drawn by the target's mix (detailed video captions by default: whichever of
sharegpt4video, long_caption, vdc_detailed, dsc_plus a sample has). A HowToCaption caption
becomes one entry per aligned clip, each with the clip's `start` and `end` in seconds within
the video, the way video-text datasets of short clips in long videos are laid out. A clip
sample's entry carries its window in its source (`source`, `start`, `end`) for reference; its
file is already just the clip.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from capmill.export.mix import sample_rng
from capmill.export.targets import Exporter

if TYPE_CHECKING:
    from capmill.export.config import ExportConfig
    from capmill.sample import Sample

SEGMENTED = "howtocaption"


class VideoLlavaExporter(Exporter):
    def __init__(self, config: ExportConfig, out: str):
        super().__init__(config, out)
        from capmill.prompts import load_template

        options = load_template("export", "video_instructions").options
        self.instructions, self.segment_turns = options["instructions"], options["segment"]
        os.makedirs(os.path.join(out, "videos"), exist_ok=True)
        self.path = os.path.join(out, "llava_video.json")
        self.file = open(f"{self.path}.tmp", "w", encoding="utf-8")
        self.file.write("[")
        self.first = True

    def _entry(self, record: dict) -> None:
        self.file.write(("\n" if self.first else ",\n") + json.dumps(record, ensure_ascii=False))
        self.first = False

    def write(self, sample: Sample, image: bytes | None, ext: str) -> str:
        chosen, text, _ = self.sampler.text_for(sample)
        video_rel = f"videos/{sample.key}.{ext}"
        with open(os.path.join(self.out, video_rel), "wb") as f:
            f.write(image)
        caption = sample.captions.get(chosen)
        segments = caption.meta.get("segments") if caption is not None and chosen == SEGMENTED else None
        if segments:
            for i, segment in enumerate(segments):
                turns = self.segment_turns
                turn = turns[sample_rng(self.config.seed, f"{sample.key}#{i}", "instruction").randrange(len(turns))]
                self._entry({"id": f"{sample.key}_{i:04d}", "video": video_rel, "start": segment["start"],
                             "end": segment["end"], "text_source": chosen, "conversations": [
                                 {"from": "human", "value": f"<video>\n{turn}"},
                                 {"from": "gpt", "value": segment["text"]}]})
            return chosen
        turn = self.instructions[sample_rng(self.config.seed, sample.key, "instruction").randrange(len(self.instructions))]
        record = {"id": sample.key, "video": video_rel, "text_source": chosen, "conversations": [
            {"from": "human", "value": f"<video>\n{turn}"}, {"from": "gpt", "value": text}]}
        clip = sample.media.clip
        if clip is not None:
            record.update(source=clip.source, start=clip.start, end=clip.end)
        self._entry(record)
        return chosen

    def close(self) -> list[str]:
        self.file.write("\n]\n")
        self.file.close()
        os.replace(f"{self.path}.tmp", self.path)
        return ["llava_video.json"]
