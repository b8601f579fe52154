"""One exporter per training target. Each opens a shard writer (see `capmill.export.writers`) per
run shard, writes each sample in its trainer's layout, and says what text it chose (`Draw`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from capmill.export.dreamlip import DEFAULT_K, sentence_pool
from capmill.export.mix import ALT_TEXT, Draw, MixSampler, sample_rng, texts_of

# The source a grounding sample without an image-level text is counted under.
REGIONS_ONLY = "regions"
from capmill.export.writers import DiffusionParquetShard, LlavaShard, SidecarShard, TarShard, assemble_llava

if TYPE_CHECKING:
    from capmill.export.config import ExportConfig
    from capmill.sample import Sample
    from capmill.writers.base import ShardWriter


class Exporter:
    """Writes one target's layout, shard by shard."""

    # Files outside the shards that `finish` writes (and --force deletes).
    files_outside_shards: list[str] = []

    def __init__(self, config: ExportConfig, out: str):
        self.config = config
        self.out = out
        self.sampler = MixSampler(config.mix, config.seed)

    def open(self, shard: str) -> ShardWriter:
        raise NotImplementedError

    def write(self, writer: Any, sample: Sample, image: bytes, ext: str) -> Draw:
        raise NotImplementedError

    def finish(self, shards: list[str]) -> list[str]:
        """After every shard is committed; `shards` are the committed shards in order."""
        return []


class ClipExporter(Exporter):
    """webdataset shards for OpenCLIP: KEY.EXT, KEY.txt (the mixed caption), and KEY.json with
    every variant, so a training-time sampler can redraw the mix (see README)."""

    def open(self, shard: str) -> TarShard:
        return TarShard(self.out, shard)

    def write(self, writer: TarShard, sample: Sample, image: bytes, ext: str) -> Draw:
        draw = self.sampler.draw(sample)
        if not draw.source:
            return draw
        record = {"key": sample.key, "text_source": draw.source, "texts": texts_of(sample)}
        if draw.fusion_fallback_of:
            record["fusion_fallback_of"] = draw.fusion_fallback_of
        writer.add(f"{sample.key}.{ext}", image)
        writer.add(f"{sample.key}.txt", draw.text.encode("utf-8"))
        writer.add_json(f"{sample.key}.json", record)
        return draw


class MllmExporter(Exporter):
    """LLaVA-style conversations: OUT/images/SHARD/KEY.EXT and one OUT/llava.json array of
    {"id", "image", "conversations": [human: "<image>\\n" + instruction, gpt: caption]}."""

    files_outside_shards = ["llava.json"]

    def __init__(self, config: ExportConfig, out: str):
        super().__init__(config, out)
        from capmill.prompts import load_template

        self.instructions = load_template("export", "mllm_instructions").options["instructions"]

    def open(self, shard: str) -> LlavaShard:
        return LlavaShard(self.out, shard)

    def write(self, writer: LlavaShard, sample: Sample, image: bytes, ext: str) -> Draw:
        draw = self.sampler.draw(sample)
        if not draw.source:
            return draw
        instruction = self.instructions[sample_rng(self.config.seed, sample.key, "instruction").randrange(len(self.instructions))]
        writer.add(sample.key, ext, image, {
            "id": sample.key, "image": writer.image_path(sample.key, ext), "text_source": draw.source,
            "conversations": [{"from": "human", "value": f"<image>\n{instruction}"}, {"from": "gpt", "value": draw.text}],
        })
        return draw

    def finish(self, shards: list[str]) -> list[str]:
        return [assemble_llava(self.out, shards)]


class DiffusionExporter(Exporter):
    """The chosen caption per image: one parquet per shard (key, caption, caption_source,
    alt_text, image bytes, image_ext), or sidecar folders of KEY.EXT + KEY.txt per shard, named
    `N_SHARD` with `repeats: N` as kohya's sd-scripts reads a training folder."""

    def open(self, shard: str) -> ShardWriter:
        if self.config.diffusion_format == "sidecar":
            return SidecarShard(self.out, self.config.folder_name(shard))
        return DiffusionParquetShard(self.out, shard)

    def write(self, writer: Any, sample: Sample, image: bytes, ext: str) -> Draw:
        draw = self.sampler.draw(sample)
        if not draw.source:
            return draw
        if isinstance(writer, SidecarShard):
            if not writer.write_text(sample, draw.text):
                return Draw("", "", "no_image", dropped=True)
        else:
            writer.add({"key": sample.key, "caption": draw.text, "caption_source": draw.source,
                        "alt_text": sample.alt_text, "image": image, "image_ext": ext})
        return draw


class DreamlipExporter(Exporter):
    """DreamLIP: per image the whole sentence pool of the long captions (`mix.synthetic`, split as
    DreamLIP's reference splits), drawn from per epoch by `capmill.export.dreamlip.SubCaptionSampler`
    in the training pipeline. webdataset shards: KEY.EXT, KEY.txt (the AltText, or the first
    sentence when there is none) and KEY.json (`alt_text`, `sentences`, `sources`, `k`)."""

    def open(self, shard: str) -> TarShard:
        return TarShard(self.out, shard)

    def pool(self, sample: Sample) -> tuple[list[str], list[str]]:
        texts = texts_of(sample)
        sources = [name for name in self.config.mix.synthetic if texts.get(name)]
        return sentence_pool([texts[name] for name in sources]), sources

    def write(self, writer: TarShard, sample: Sample, image: bytes, ext: str) -> Draw:
        sentences, sources = self.pool(sample)
        alt = (sample.alt_text or "").strip()
        if not alt and not sentences:
            return Draw("", "", "")
        writer.add(f"{sample.key}.{ext}", image)
        writer.add(f"{sample.key}.txt", (alt or sentences[0]).encode("utf-8"))
        writer.add_json(f"{sample.key}.json", {"key": sample.key, "alt_text": alt or None, "sentences": sentences,
                                               "sources": sources, "k": DEFAULT_K})
        source = "+".join(sources) if sources else ALT_TEXT
        return Draw(source, alt, source if sources else f"{ALT_TEXT} (no sentences)", mix_fallback=not sources)


class GroundingExporter(Exporter):
    """Grounding-style training data from region captions (FlexCap-style `regions`): webdataset
    shards of KEY.EXT, KEY.txt (the image-level text of the mix, often the AltText) and KEY.json
    with `regions`: [{"bbox": [x0, y0, x1, y1] normalised to the image's width and height,
    "caption", "score", "label"}] — the captioned regions only (skipped and guard-flagged ones are
    left out). A sample without a captioned region is not written."""

    def open(self, shard: str) -> TarShard:
        return TarShard(self.out, shard)

    def write(self, writer: TarShard, sample: Sample, image: bytes, ext: str) -> Draw:
        regions = [{"bbox": r["box"], "caption": r["caption"], "score": r.get("score"),
                    **({"label": r["label"]} if r.get("label") is not None else {})}
                   for r in sample.regions if r.get("caption") and not r.get("flagged") and not r.get("skipped")]
        if not regions:
            return Draw("", "", "no captioned region", dropped=True)
        draw = self.sampler.draw(sample)
        writer.add(f"{sample.key}.{ext}", image)
        writer.add(f"{sample.key}.txt", draw.text.encode("utf-8"))
        writer.add_json(f"{sample.key}.json", {"key": sample.key, "text_source": draw.source or None,
                                               "regions": regions})
        if draw.source:
            return draw
        return Draw(REGIONS_ONLY, "", f"{REGIONS_ONLY} (no image-level text)")


EXPORTERS: dict[str, type[Exporter]] = {
    "clip": ClipExporter,
    "mllm": MllmExporter,
    "diffusion": DiffusionExporter,
    "dreamlip": DreamlipExporter,
    "grounding": GroundingExporter,
}



def _video_exporter(config: ExportConfig, out: str) -> Exporter:
    from capmill.export.video import VideoLlavaExporter

    return VideoLlavaExporter(config, out)


EXPORTERS["llava_video"] = _video_exporter  # type: ignore[assignment]


def _clap_exporter(config: ExportConfig, out: str) -> Exporter:
    from capmill.export.audio import ClapExporter

    return ClapExporter(config, out)


EXPORTERS["clap"] = _clap_exporter  # type: ignore[assignment]
