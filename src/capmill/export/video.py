"""`capmill export --target llava_video`: video-LLM training data in the LLaVA layout.

    OUT/videos/SHARD/KEY.EXT     the video, or the clip for clip samples (its own bytes)
    OUT/llava_video.json         [{"id", "video": "videos/SHARD/KEY.EXT", "text_source",
                                   "conversations": [{"from": "human", "value": "<video>\\n…"},
                                                     {"from": "gpt", "value": CAPTION}]}, …]

The caption is drawn by the target's mix (detailed video captions by default: whichever of
sharegpt4video, long_caption, vdc_detailed, howtocaption, dsc_plus a sample has). A HowToCaption
caption becomes one entry per aligned clip, each with the clip's `start` and `end` in seconds
within the video, the way video-text datasets of short clips in long videos are laid out. A
clip sample's entry carries its window in its source (`source`, `start`, `end`) for reference;
its file is already just the clip. Shards commit like the other exports' (videos and a part
file per shard, the JSON assembled once all are committed), so an export resumes.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import TYPE_CHECKING, Any

from capmill.export.mix import Draw, sample_rng
from capmill.export.targets import Exporter
from capmill.writers.base import ShardWriter, tmp_name

if TYPE_CHECKING:
    from capmill.export.config import ExportConfig
    from capmill.sample import Sample

SEGMENTED = "howtocaption"
PARTS_DIR = "_llava_video"
FILE = "llava_video.json"


class VideoShard(ShardWriter):
    """One shard of the export: its videos in `videos/SHARD/` and its entries in
    `_llava_video/SHARD.json`."""

    def __init__(self, out_dir: str, shard: str):
        super().__init__(out_dir, shard, text_field="alt_text")
        videos = os.path.join(out_dir, "videos")
        os.makedirs(videos, exist_ok=True)
        self.final_videos = os.path.join(videos, shard)
        self.tmp_videos = tmp_name(videos, shard)
        os.makedirs(self.tmp_videos)
        self.parts = os.path.join(out_dir, PARTS_DIR)
        os.makedirs(self.parts, exist_ok=True)
        self.records: list[dict[str, Any]] = []

    def video_path(self, key: str, ext: str) -> str:
        return f"videos/{self.shard}/{key}.{ext}"

    def add(self, key: str, ext: str, data: bytes, records: list[dict[str, Any]]) -> None:
        path = os.path.join(self.tmp_videos, f"{key}.{ext}")
        os.makedirs(os.path.dirname(path), exist_ok=True)  # keys may hold sub-folders ("dir/key")
        with open(path, "wb") as f:
            f.write(data)
        self.records.extend(records)

    def write(self, sample: Sample) -> None:
        raise TypeError("a video export shard takes its entries through add()")

    def commit(self) -> list[str]:
        if os.path.exists(self.final_videos):
            shutil.rmtree(self.final_videos)
        os.replace(self.tmp_videos, self.final_videos)
        tmp = tmp_name(self.parts, f"{self.shard}.json")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.records, f, ensure_ascii=False)
        os.replace(tmp, os.path.join(self.parts, f"{self.shard}.json"))
        return [f"videos/{self.shard}/", f"{PARTS_DIR}/{self.shard}.json"]

    def abort(self) -> None:
        shutil.rmtree(self.tmp_videos, ignore_errors=True)


class VideoLlavaExporter(Exporter):
    files_outside_shards = [FILE]

    def __init__(self, config: ExportConfig, out: str):
        super().__init__(config, out)
        from capmill.prompts import load_template

        options = load_template("export", "video_instructions").options
        self.instructions, self.segment_turns = options["instructions"], options["segment"]

    def open(self, shard: str) -> VideoShard:
        return VideoShard(self.out, shard)

    def write(self, writer: VideoShard, sample: Sample, image: bytes, ext: str) -> Draw:
        draw = self.sampler.draw(sample)
        if not draw.source:
            return draw
        video = writer.video_path(sample.key, ext)
        caption = sample.captions.get(draw.source)
        segments = caption.meta.get("segments") if caption is not None and draw.source == SEGMENTED else None
        if segments:
            records = []
            for i, segment in enumerate(segments):
                turns = self.segment_turns
                turn = turns[sample_rng(self.config.seed, f"{sample.key}#{i}", "instruction").randrange(len(turns))]
                records.append({"id": f"{sample.key}_{i:04d}", "video": video, "start": segment["start"],
                                "end": segment["end"], "text_source": draw.source, "conversations": [
                                    {"from": "human", "value": f"<video>\n{turn}"},
                                    {"from": "gpt", "value": segment["text"]}]})
        else:
            turn = self.instructions[sample_rng(self.config.seed, sample.key, "instruction").randrange(len(self.instructions))]
            record = {"id": sample.key, "video": video, "text_source": draw.source, "conversations": [
                {"from": "human", "value": f"<video>\n{turn}"}, {"from": "gpt", "value": draw.text}]}
            clip = sample.media.clip
            if clip is not None:
                record.update(source=clip.source, start=clip.start, end=clip.end)
            records = [record]
        writer.add(sample.key, ext, image, records)
        return draw

    def finish(self, shards: list[str]) -> list[str]:
        final = os.path.join(self.out, FILE)
        tmp = tmp_name(self.out, FILE)
        with open(tmp, "w", encoding="utf-8") as out:
            out.write("[")
            first = True
            for shard in shards:
                with open(os.path.join(self.out, PARTS_DIR, f"{shard}.json"), encoding="utf-8") as f:
                    for record in json.load(f):
                        out.write(("\n" if first else ",\n") + json.dumps(record, ensure_ascii=False))
                        first = False
            out.write("\n]\n")
        os.replace(tmp, final)
        return [FILE]
