"""One exporter per training target. Each receives the run's samples shard by shard and writes
the layout its trainer reads; files appear under their final name only once complete."""

from __future__ import annotations

import io
import json
import os
import tarfile
from typing import TYPE_CHECKING, Any

from capmill.export.mix import ALT_TEXT, MixSampler, sample_rng, texts_of
from capmill.text.length import split_sentences

if TYPE_CHECKING:
    from capmill.export.config import ExportConfig
    from capmill.sample import Sample


class _TarShard:
    """A tar written under a temporary name and renamed when closed."""

    def __init__(self, path: str):
        self.path = path
        self.tmp = f"{path}.tmp"
        self.tar = tarfile.open(self.tmp, "w")

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        self.tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self.tar.close()
        os.replace(self.tmp, self.path)


def _json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


class Exporter:
    """Writes one target's layout. `write` returns the name of the text it chose for the
    sample (for the export's counts)."""

    needs_image = True

    def __init__(self, config: ExportConfig, out: str):
        self.config = config
        self.out = out
        self.sampler = MixSampler(config.mix, config.seed)

    def begin_shard(self, name: str) -> None:
        pass

    def write(self, sample: Sample, image: bytes | None, ext: str) -> str:
        raise NotImplementedError

    def end_shard(self) -> None:
        pass

    def close(self) -> list[str]:
        """Finish the export; returns files written outside shards."""
        return []


class ClipExporter(Exporter):
    """webdataset shards for OpenCLIP: KEY.EXT, KEY.txt (the mixed caption), and KEY.json with
    every variant, so a training-time sampler can redraw the mix (see README)."""

    def begin_shard(self, name: str) -> None:
        self.shard = _TarShard(os.path.join(self.out, f"{name}.tar"))

    def write(self, sample: Sample, image: bytes | None, ext: str) -> str:
        chosen, text, texts = self.sampler.text_for(sample)
        self.shard.add(f"{sample.key}.{ext}", image)
        self.shard.add(f"{sample.key}.txt", text.encode("utf-8"))
        self.shard.add(f"{sample.key}.json", _json({"key": sample.key, "text_source": chosen, "texts": texts}))
        return chosen

    def end_shard(self) -> None:
        self.shard.close()


class MllmExporter(Exporter):
    """LLaVA-style conversations: OUT/images/KEY.EXT and one OUT/llava.json array of
    {"id", "image", "conversations": [human: "<image>\\n" + instruction, gpt: caption]}."""

    def __init__(self, config: ExportConfig, out: str):
        super().__init__(config, out)
        from capmill.prompts import load_template

        self.instructions = load_template("export", "mllm_instructions").options["instructions"]
        os.makedirs(os.path.join(out, "images"), exist_ok=True)
        self.path = os.path.join(out, "llava.json")
        self.file = open(f"{self.path}.tmp", "w", encoding="utf-8")
        self.file.write("[")
        self.first = True

    def write(self, sample: Sample, image: bytes | None, ext: str) -> str:
        chosen, text, _ = self.sampler.text_for(sample)
        image_rel = f"images/{sample.key}.{ext}"
        with open(os.path.join(self.out, image_rel), "wb") as f:
            f.write(image)
        instruction = self.instructions[sample_rng(self.config.seed, sample.key, "instruction").randrange(len(self.instructions))]
        record = {"id": sample.key, "image": image_rel, "text_source": chosen, "conversations": [
            {"from": "human", "value": f"<image>\n{instruction}"},
            {"from": "gpt", "value": text},
        ]}
        self.file.write(("\n" if self.first else ",\n") + json.dumps(record, ensure_ascii=False))
        self.first = False
        return chosen

    def close(self) -> list[str]:
        self.file.write("\n]\n")
        self.file.close()
        os.replace(f"{self.path}.tmp", self.path)
        return ["llava.json"]


class DiffusionExporter(Exporter):
    """The chosen caption per image: sidecar files (OUT/SHARD/KEY.EXT + KEY.txt) or one parquet
    per shard (key, caption, caption_source, alt_text, image bytes, image_ext)."""

    def begin_shard(self, name: str) -> None:
        self.name = name
        self.rows: list[dict[str, Any]] = []
        if self.config.diffusion_format == "sidecar":
            self.folder = os.path.join(self.out, name)
            os.makedirs(self.folder, exist_ok=True)

    def write(self, sample: Sample, image: bytes | None, ext: str) -> str:
        chosen, text, _ = self.sampler.text_for(sample)
        if self.config.diffusion_format == "sidecar":
            with open(os.path.join(self.folder, f"{sample.key}.{ext}"), "wb") as f:
                f.write(image)
            with open(os.path.join(self.folder, f"{sample.key}.txt"), "w", encoding="utf-8") as f:
                f.write(text)
        else:
            self.rows.append({"key": sample.key, "caption": text, "caption_source": chosen,
                              "alt_text": sample.alt_text, "image": image, "image_ext": ext})
        return chosen

    def end_shard(self) -> None:
        if self.config.diffusion_format != "parquet":
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("key", pa.string()), ("caption", pa.string()), ("caption_source", pa.string()),
                            ("alt_text", pa.string()), ("image", pa.binary()), ("image_ext", pa.string())])
        path = os.path.join(self.out, f"{self.name}.parquet")
        pq.write_table(pa.Table.from_pylist(self.rows, schema=schema), f"{path}.tmp")
        os.replace(f"{path}.tmp", path)


class DreamlipExporter(Exporter):
    """DreamLIP: the long captions split into sentences, `sentences` of them sampled per image
    (without replacement when there are enough, topped up with repeats otherwise so every
    sample has the same count), plus the AltText. webdataset shards: KEY.EXT, KEY.txt (the
    AltText, or the first sub-caption when there is none) and KEY.json."""

    def begin_shard(self, name: str) -> None:
        self.shard = _TarShard(os.path.join(self.out, f"{name}.tar"))

    def sub_captions(self, sample: Sample) -> tuple[list[str], list[str]]:
        texts = texts_of(sample)
        sources = [name for name in self.config.mix.synthetic if texts.get(name)]
        pool = [s for name in sources for s in split_sentences(texts[name])]
        k = self.config.sentences
        rng = sample_rng(self.config.seed, sample.key, "dreamlip")
        if len(pool) >= k:
            return rng.sample(pool, k), sources
        return (pool + [rng.choice(pool) for _ in range(k - len(pool))] if pool else []), sources

    def write(self, sample: Sample, image: bytes | None, ext: str) -> str:
        subs, sources = self.sub_captions(sample)
        alt = (sample.alt_text or "").strip()
        self.shard.add(f"{sample.key}.{ext}", image)
        self.shard.add(f"{sample.key}.txt", (alt or (subs[0] if subs else "")).encode("utf-8"))
        self.shard.add(f"{sample.key}.json", _json({"key": sample.key, "alt_text": alt or None,
                                                     "sub_captions": subs, "sources": sources}))
        return "+".join(sources) if sources else ALT_TEXT

    def end_shard(self) -> None:
        self.shard.close()


EXPORTERS: dict[str, type[Exporter]] = {
    "clip": ClipExporter,
    "mllm": MllmExporter,
    "diffusion": DiffusionExporter,
    "dreamlip": DreamlipExporter,
}


def _video_exporter(config: ExportConfig, out: str) -> Exporter:
    from capmill.export.video import VideoLlavaExporter

    return VideoLlavaExporter(config, out)


EXPORTERS["llava_video"] = _video_exporter  # type: ignore[assignment]
