"""BASELINE for benchmarks/scale_out.py (see ray_driver_writes.py).

What runs inside Ray workers: shards read into rows, images decoded, stages in actors.

Samples cross Ray as Arrow rows, one per sample plus one end row per shard:

    shard    int32    position of the shard in the run's list of pending shards
    index    int64    position of the sample in its shard; on the end row, the shard's sample count
    end      bool     the shard's end row (it carries the count, the read time, or the read error)
    record   string   Sample.to_dict() as JSON, without image bytes
    data     binary   the encoded image or video bytes as read (what the writers store)
    pixels   binary   the decoded, normalised image once decoded (raw bytes; mode, width, height);
                      for a video, its sampled frames one after another (all of one size; their
                      timestamps are in the record's `frame_times`); for audio, its mono
                      waveform as little-endian float32 (mode "f32le", width = its rate)
    seconds  string   JSON {step: seconds}: this row's share of read, decode and stage time
    trail    string   JSON [stage, ...]: the stages the sample entered (per-stage counts)
    partial  bool     on an end row: --limit cut the shard
    error    string   on an end row: why the shard could not be read

The image bytes travel in their own binary column rather than base64 inside the JSON record
(Sample.to_dict(include_image_bytes=True)), which would add a third to every image and cost an
encode and a decode per hop. Decoded pixels travel too, so every stage sees exactly the image
the local executor's decode step makes, without decoding again in each actor.

A video's sampled frames travel the same way rather than being decoded again in each stage
actor: the frames are bounded (video.sampling.max_frames at video.max_side, a few MB), while
seeking and decoding a video costs CPU time that would otherwise be spent once per stage, on the
GPU actors' CPUs, while their GPUs wait.

Rows of one shard are spread over many blocks and batches; `shard` and `index` let the driver
put them back in order, and the end row tells it when the shard is complete.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from capmill.errors import CapmillError
from capmill.media.decode import decode_batch
from capmill.pipeline import CircuitBreaker, run_stages
from capmill.sample import AUDIO, VIDEO, Frame, Sample, Waveform
from capmill.stages.base import RunContext

# `mode` of a row whose pixels are an audio waveform.
AUDIO_MODE = "f32le"
COLUMNS = ("shard", "index", "end", "record", "data", "pixels", "mode", "width", "height", "seconds", "trail",
           "partial", "error")


def schema():
    """Fixed column types, so a block whose rows all lack pixels still concatenates with others."""
    import pyarrow as pa

    return pa.schema([
        ("shard", pa.int32()), ("index", pa.int64()), ("end", pa.bool_()), ("record", pa.string()),
        ("data", pa.binary()), ("pixels", pa.binary()), ("mode", pa.string()), ("width", pa.int32()),
        ("height", pa.int32()), ("seconds", pa.string()), ("trail", pa.string()), ("partial", pa.bool_()),
        ("error", pa.string()),
    ])


def table_of(rows: list[dict[str, Any]]):
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=schema())


def sample_row(sample: Sample, shard: int, index: int, seconds: dict[str, float], keep_pixels: bool,
               trail: list[str] | None = None) -> dict[str, Any]:
    frames = sample.media.frames if keep_pixels else None
    image = sample.image.image if keep_pixels else None
    if frames:
        image = frames[0].image
    pixels = b"".join(f.image.tobytes() for f in frames) if frames else (image.tobytes() if image is not None else None)
    mode, width, height = (image.mode, image.width, image.height) if image is not None else (None, None, None)
    wave = sample.media.audio if keep_pixels and sample.media.kind == AUDIO else None
    if wave is not None:
        pixels, mode, width, height = wave.samples.astype("<f4").tobytes(), AUDIO_MODE, wave.rate, 0
    return {
        "shard": shard, "index": index, "end": False,
        "record": json.dumps(sample.to_dict(), ensure_ascii=False),
        "data": sample.image.data,
        "pixels": pixels,
        "mode": mode,
        "width": width,
        "height": height,
        "seconds": json.dumps(seconds), "trail": json.dumps(trail or []), "partial": None, "error": None,
    }


def end_row(shard: int, count: int, seconds: dict[str, float], error: str | None = None,
            partial: bool = False) -> dict[str, Any]:
    return {"shard": shard, "index": count, "end": True, "record": None, "data": None, "pixels": None,
            "mode": None, "width": None, "height": None, "seconds": json.dumps(seconds), "trail": None,
            "partial": partial, "error": error}


def row_trail(row: dict[str, Any]) -> list[str]:
    return json.loads(row["trail"] or "[]")


def row_sample(row: dict[str, Any], with_pixels: bool = True) -> Sample:
    sample = Sample.from_dict(json.loads(row["record"]))
    ref = sample.media
    ref.data = row["data"]
    if with_pixels and row["pixels"] is not None and row["mode"] == AUDIO_MODE:
        import numpy as np

        ref.audio = Waveform(samples=np.frombuffer(row["pixels"], dtype="<f4").astype(np.float32), rate=row["width"])
    elif with_pixels and row["pixels"] is not None:
        from PIL import Image

        size = (row["width"], row["height"])
        if ref.kind == VIDEO:
            step = len(row["pixels"]) // max(1, len(ref.frame_times or []))
            ref.frames = [Frame(t, Image.frombytes(row["mode"], size, row["pixels"][i * step:(i + 1) * step]))
                          for i, t in enumerate(ref.frame_times or [])]
            ref.frame_times = None
        else:
            ref.image = Image.frombytes(row["mode"], size, row["pixels"])
    return sample


def add_seconds(row: dict[str, Any], seconds: dict[str, float]) -> str:
    merged = json.loads(row["seconds"] or "{}")
    for name, value in seconds.items():
        merged[name] = merged.get(name, 0.0) + value
    return json.dumps(merged)


def read_shards(batch, *, input_config, shards: list, caps: dict[int, int] | None, rows_per_block: int) -> Iterator:
    """Ray Data UDF over rows holding shard positions: yields each shard's samples as blocks of
    rows, then its end row. A shard that fails to read ends with an end row naming the error;
    the rows it gave before are discarded by the driver."""
    reader = input_config.build()
    for position in batch.column("shard").to_pylist():
        shard = shards[position]
        cap = caps.get(position) if caps is not None else None
        rows: list[dict[str, Any]] = []
        count, error, partial = 0, None, False
        start = time.perf_counter()
        try:
            for sample in reader.read(shard):
                if cap is not None and count >= cap:
                    partial = True  # the limit cut this shard
                    break
                rows.append(sample_row(sample, position, count, {}, keep_pixels=False))
                count += 1
                if len(rows) == rows_per_block:
                    yield table_of(rows)
                    rows = []
        except Exception as e:  # a shard that cannot be read fails alone, as in a local run
            error = f"{type(e).__name__}: {e}"
        rows.append(end_row(position, count, {"read": time.perf_counter() - start}, error, partial))
        yield table_of(rows)


def decode_rows(batch, *, image_config, keep_pixels: bool):
    """Ray Data UDF: decode every sample's image with the shared hygiene step."""
    rows = batch.to_pylist()
    samples = [(row, row_sample(row)) for row in rows if not row["end"]]
    seconds = decode_batch([s for _, s in samples], image_config)
    share = {"decode": seconds / len(samples)} if samples else {}
    out = []
    for row in rows:
        if row["end"]:
            out.append(row)
    for row, sample in samples:
        out.append(sample_row(sample, row["shard"], row["index"], json.loads(add_seconds(row, share)), keep_pixels,
                              row_trail(row)))
    return table_of(out)


class StageWorker:
    """One stage in a Ray actor: built from its config and set up once, in the worker.

    Each call groups its rows by shard and runs the shared `run_stages` on each group, so a
    stage never sees two shards in one batch (as in a local run) and a key reused by another
    shard cannot be confused with this one.
    """

    def __init__(self, stage_config, context: dict[str, Any], keep_pixels: bool, breaker_after: int = 0):
        self.keep_pixels = keep_pixels
        # Counts the transient failures this actor sees; its CircuitOpenError stops the run.
        self.breaker = CircuitBreaker(breaker_after)
        self.setup_error: CapmillError | None = None
        self.stage = stage_config.build()
        try:
            self.stage.setup(RunContext(**context))
        except CapmillError as e:
            # Ray reports an actor that fails in its constructor by message only; raised from a
            # batch instead, the error reaches the driver as itself, with its advice.
            self.setup_error = e

    def __call__(self, batch):
        if self.setup_error is not None:
            raise self.setup_error
        rows = batch.to_pylist()
        out = [row for row in rows if row["end"]]
        by_shard: dict[int, list[dict[str, Any]]] = {}
        for row in rows:
            if not row["end"]:
                by_shard.setdefault(row["shard"], []).append(row)
        for group in by_shard.values():
            samples = [row_sample(row) for row in group]
            seconds: dict[str, float] = {}
            trails = [row_trail(row) for row in group]
            samples = run_stages([self.stage], samples, seconds, trails, self.breaker)
            share = {name: value / len(group) for name, value in seconds.items()}
            for row, sample, trail in zip(group, samples, trails, strict=True):
                out.append(sample_row(sample, row["shard"], row["index"], json.loads(add_seconds(row, share)),
                                      self.keep_pixels, trail))
        return table_of(out)

    def __del__(self):
        # Ray Data ends its actors when the dataset is done; close the stage's backends then.
        stage = getattr(self, "stage", None)
        if stage is not None:
            try:
                stage.teardown()
            except Exception:
                pass
