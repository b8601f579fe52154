"""`capmill export --target clap`: audio-text pairs for contrastive training (CLAP and kin).

    OUT/SHARD.tar    KEY.EXT   the audio file as the run stored it (a clip's own FLAC for clips)
                     KEY.json  {"text": [CAPTION], "key", "text_source", "texts": {name: text},
                                "original_data": {"seconds", "sample_rate", "channels", "clip"}}
                     KEY.txt   the caption

LAION-CLAP's webdataset loader reads exactly this: the audio member by its extension and the
training text from the JSON's `text` list (it draws one of the list per step). The caption is
drawn by the target's mix, seeded per key (`--set mix.…` sweeps it without recaptioning): by
default the audio methods' captions (audiosetcaps, clap_refine, autocap) or the dense and short
formats, whichever a sample has, and never the AltText (`p_synthetic: 1`): for audio the
"AltText" is most often a class label or a file name. Every text the sample has is kept under
`texts`, so a training-time sampler can redraw. Only audio samples are exported; others are
counted as skipped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from capmill.export.mix import Draw, texts_of
from capmill.export.targets import Exporter
from capmill.export.writers import TarShard
from capmill.sample import AUDIO

if TYPE_CHECKING:
    from capmill.sample import Sample


class ClapExporter(Exporter):
    def open(self, shard: str) -> TarShard:
        return TarShard(self.out, shard)

    def write(self, writer: TarShard, sample: Sample, image: bytes, ext: str) -> Draw:
        if sample.media.kind != AUDIO:
            return Draw("", "", f"not audio ({sample.media.kind})", dropped=True)
        draw = self.sampler.draw(sample)
        if not draw.source:
            return draw
        facts: dict[str, Any] = {k: v for k, v in (sample.meta.get("audio") or {}).items()
                                 if k in ("duration", "sample_rate", "channels", "seconds")}
        if sample.media.clip is not None:
            facts["clip"] = sample.media.clip.to_dict()
        writer.add(f"{sample.key}.{ext}", image)
        writer.add(f"{sample.key}.txt", draw.text.encode("utf-8"))
        writer.add_json(f"{sample.key}.json", {"text": [draw.text], "key": sample.key, "text_source": draw.source,
                                               "texts": texts_of(sample), "original_data": facts})
        return draw
