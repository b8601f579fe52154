"""Speech recognition on a video's soundtrack or an audio sample (`type: asr`).

The transcript is stored like a caption (`captions["transcript"]` by default: the text, with
the timestamped segments in `meta["segments"]`, seconds from the start of the sample's window),
so later stages read it by name and the writers keep it. A video without sound gets no
transcript and says so in `meta["asr"]`; a soundtrack that cannot be decoded is a decode_error.
A video's soundtrack is released after recognition (nothing later needs it); an audio sample's
waveform (decoded by the run's audio step, resampled to 16 kHz here) stays for the next stages.

HowToCaption (Shvetsova et al., ECCV 2024) starts from narration transcripts; the backend is
faster-whisper (`type: faster_whisper`), whose bundled tiny.en model runs offline.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from capmill import keys
from capmill.backends.base import SpeechRecognizer, SpeechRequest
from capmill.components import BackendSpec, StageConfig
from capmill.errors import NoAudioStream, SampleError
from capmill.keys import Key, StageIO
from capmill.sample import AUDIO, BACKEND_ERROR, DECODE_ERROR, VIDEO, Caption, Sample
from capmill.stages.base import RunContext, Stage

RATE = 16000


class AsrStageConfig(StageConfig):
    type: Literal["asr"] = "asr"
    backend: BackendSpec
    store_as: str = "transcript"
    # Language code ("en"); None: the backend's setting, or detection.
    language: str | None = None
    # Longest soundtrack transcribed (an hour of 16 kHz audio is 230 MB while it is decoded).
    max_seconds: float = Field(2 * 3600.0, gt=0)

    def build(self) -> AsrStage:
        return AsrStage(self)

    def io(self, available: frozenset[Key]) -> StageIO:
        # The soundtrack is decoded here from the video's bytes; the video must be there.
        return StageIO(reads=[keys.VIDEO], writes=[keys.caption(self.store_as)])

    def backend_roles(self) -> dict[str, type]:
        return {"backend": SpeechRecognizer}


class AsrStage(Stage):
    config: AsrStageConfig

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.backend = self.load_backend(self.config.backend, SpeechRecognizer, "the asr stage")

    def process(self, batch: list[Sample]) -> list[Sample]:
        from capmill.media.audio import soundtrack

        jobs = []
        for sample in batch:
            if sample.media.kind not in (VIDEO, AUDIO):
                sample.fail(DECODE_ERROR, "asr needs a video with a soundtrack, or audio")
                continue
            try:
                wave = soundtrack(sample.media, RATE, max_seconds=self.config.max_seconds)
            except NoAudioStream:
                sample.meta["asr"] = "no audio stream"
                continue
            except SampleError as e:
                sample.fail(e.status, f"asr: {e.reason}")
                continue
            jobs.append((sample, wave))
        if not jobs:
            return batch
        requests = [SpeechRequest(audio=w.samples, rate=w.rate, language=self.config.language, tag=s.key)
                    for s, w in jobs]
        for (sample, wave), transcript in zip(jobs, self.backend.transcribe(requests), strict=True):
            if sample.media.kind == VIDEO:
                sample.media.audio = None
            if not transcript.ok:
                sample.fail(BACKEND_ERROR, f"asr: {transcript.error}")
                continue
            segments = [{**s.to_dict(), "start": round(s.start + wave.start, 3), "end": round(s.end + wave.start, 3)}
                        for s in transcript.segments if s.text.strip()]
            key = self.config.store_as
            sample.captions[key] = Caption(text=transcript.text, source=key, model=self.backend.model_id,
                                           meta={"segments": segments, "language": transcript.language,
                                                 "seconds": round(len(wave.samples) / wave.rate, 3), **transcript.meta})
        return batch
