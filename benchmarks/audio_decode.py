"""Audio decoding and CLAP reranking: throughput against plain loops, memory against length,
other decoders, and the scorer calls K candidates cost.

    python benchmarks/audio_decode.py [--clips 24] [--seconds 10] [--repeats 3]

1. Throughput: capmill's `decode_audio` (header hygiene, block-wise mono mixdown, NaN and overs
   counted, soxr resampling as it streams) against the plain loop a user writes: read the whole
   file (soundfile.read; PyAV for M4A, every frame converted to float), mix down with a mean,
   resample the whole signal with soxr. Same files, same output rate; ratio = capmill / plain
   (target >= 0.8). 44.1 kHz stereo clips of `--seconds`, in FLAC, MP3 and M4A (AAC), to 16 kHz
   (Whisper, Qwen2-Audio) and 48 kHz (CLAP).
2. Memory: peak traced allocation (tracemalloc sees numpy's buffers) of decoding 1, 4 and 8
   minutes of 48 kHz 8-channel WAV, capmill against the plain loop, which holds the whole file
   as float32 before mixing down.
3. Other decoders on the same FLAC files, when installed: torchcodec's `AudioDecoder` (mono,
   resampled by FFmpeg's swr to the same rate).
4. CLAP-Refine's rerank cost: the `rank` stage with the tiny CLAP (first 10 s, as SLAM-AAC) on
   a batch of B clips holding K = 1, 4 and 7 candidates each (what `candidates` with K beam
   sizes writes): scorer calls per batch (one for the audio, one for all candidates, whatever K
   and B), and the wall time of the rerank against K = 1 and against scoring each candidate in a
   call of its own.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tracemalloc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))


def make_clips(folder: str, n: int, seconds: float, ext: str, rate: int = 44100, channels: int = 2) -> list[str]:
    """`n` clips of tones over noise (distinct per clip), cached on disk."""
    import numpy as np

    from capmill.testing.audio import Sound, encode_audio, render

    paths = []
    for i in range(n):
        path = os.path.join(folder, f"clip{i:03d}_{seconds:g}s_{rate}_{channels}.{ext}")
        if not os.path.exists(path):
            signal = render([Sound(seconds, tone_hz=220 + 55 * i, noise=True)], rate, seed=i)
            stereo = np.stack([signal * (1 - 0.1 * c) for c in range(channels)], axis=1)
            with open(path + ".tmp", "wb") as f:
                f.write(encode_audio(stereo, rate, ext))
            os.replace(path + ".tmp", path)
        paths.append(path)
    return paths


def capmill_decode(path: str, rate: int):
    from capmill.media.audio import AudioConfig, decode_audio
    from capmill.sample import MediaRef

    wave, _ = decode_audio(MediaRef(path=path, ext=path.rsplit(".", 1)[1], kind="audio"), AudioConfig(rate=rate))
    return wave.samples


def plain_decode(path: str, rate: int):
    """The usual hand-written loop: the whole file as float32, a mean over channels, soxr."""
    import numpy as np
    import soxr

    if path.endswith(".m4a"):
        import av

        with av.open(path) as container:
            stream = container.streams.audio[0]
            source_rate = stream.codec_context.sample_rate
            chunks = [f.to_ndarray().astype(np.float32) for f in container.decode(stream)]
        data = np.concatenate(chunks, axis=1).T  # fltp: (channels, frames) per frame
    else:
        import soundfile as sf

        data, source_rate = sf.read(path, dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    return soxr.resample(mono, source_rate, rate, quality="HQ")


def torchcodec_decode(path: str, rate: int):
    from torchcodec.decoders import AudioDecoder

    return AudioDecoder(path, sample_rate=rate, num_channels=1).get_all_samples().data.numpy()[0]


def timed(fn, paths: list[str], rate: int, repeats: int) -> float:
    """Best wall time of `repeats` passes over `paths` (a first pass warms the file cache)."""
    for p in paths:
        fn(p, rate)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for p in paths:
            out = fn(p, rate)
            assert len(out) > 0
        best = min(best, time.perf_counter() - start)
    return best


def peak_mb(fn, path: str, rate: int) -> float:
    tracemalloc.start()
    fn(path, rate)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def rerank_cost(tiny_models: str, batch: int, repeats: int) -> None:
    from capmill.media.decode import decode_batch
    from capmill.media.image import ImageConfig
    from capmill.sample import Caption, MediaRef, Sample
    from capmill.stages.base import RunContext
    from capmill.stages.rank import RankStageConfig
    from capmill.testing.audio import audio_items

    samples = [Sample(it.key, image=MediaRef(data=it.data, ext=it.ext, kind="audio"), alt_text=it.alt_text)
               for it in audio_items(batch, seconds=10.0)]
    decode_batch(samples, ImageConfig())
    results = {}
    for k in (1, 4, 7):
        for s in samples:  # K candidates per clip, as `candidates` with K beam sizes writes them
            s.captions = {f"cand.{i}": Caption(f"a sound of clip {s.key} as heard with {i + 2} beams", f"cand.{i}")
                          for i in range(k)}
        stage = RankStageConfig(candidates="cand", name="clap_refine", top_k=k,
                                scorer={"type": "clap", "model": os.path.join(tiny_models, "clap"), "max_seconds": 10}).build()
        stage.setup(RunContext())
        calls = {"audio": 0, "texts": 0}
        scorer = stage.scorer
        embed_audio, embed_texts = scorer.embed_audio, scorer.embed_texts

        def count_audio(a, _f=embed_audio, _calls=calls):
            _calls["audio"] += 1
            return _f(a)

        def count_texts(t, _f=embed_texts, _calls=calls):
            _calls["texts"] += 1
            return _f(t)

        scorer.embed_audio, scorer.embed_texts = count_audio, count_texts
        best = float("inf")
        for _ in range(repeats):
            for s in samples:
                s.captions.pop("clap_refine", None)
            calls.update(audio=0, texts=0)
            start = time.perf_counter()
            stage.process(samples)
            best = min(best, time.perf_counter() - start)
        texts = [c.text for s in samples for name, c in s.captions.items() if name.startswith("cand.")]
        # The candidates' texts in one call, as rank does, against one call per candidate.
        start = time.perf_counter()
        embed_texts(texts)
        one_call = time.perf_counter() - start
        start = time.perf_counter()
        for text in texts:
            embed_texts([text])
        naive_texts = time.perf_counter() - start
        results[k] = (best, dict(calls), len(texts), (one_call, naive_texts))
        stage.teardown()
    base = results[1][0]
    for k, (seconds, calls, n, (one_call, naive)) in results.items():
        print(f"   K={k}: {n:>3} candidates, scorer calls per batch: audio {calls['audio']}, texts {calls['texts']}; "
              f"rerank {seconds * 1000:6.1f} ms ({seconds / base:.2f}x K=1); candidate texts in one call "
              f"{one_call * 1000:6.1f} ms, one call each {naive * 1000:6.1f} ms ({naive / one_call:.1f}x)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "capmill-bench-audio"))
    args = parser.parse_args()
    os.makedirs(args.cache, exist_ok=True)
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core for every contender
    except (AttributeError, OSError):
        pass
    import torch

    torch.set_num_threads(1)
    print(f"1. throughput, {args.clips} clips of {args.seconds:g} s, 44.1 kHz stereo (best of {args.repeats})")
    for ext in ("flac", "mp3", "m4a"):
        paths = make_clips(args.cache, args.clips, args.seconds, ext)
        for rate in (16000, 48000):
            ours = timed(capmill_decode, paths, rate, args.repeats)
            plain = timed(plain_decode, paths, rate, args.repeats)
            audio = args.clips * args.seconds
            print(f"   {ext:>4} → {rate // 1000} kHz: capmill {audio / ours:6.0f}x real time   plain {audio / plain:6.0f}x "
                  f"real time   ratio {plain / ours:.2f}x")
    print("\n2. peak traced memory, 48 kHz 8-channel WAV → 48 kHz mono")
    for minutes in (1, 4, 8):
        (path,) = make_clips(args.cache, 1, minutes * 60.0, "wav", rate=48000, channels=8)
        ours, plain = peak_mb(capmill_decode, path, 48000), peak_mb(plain_decode, path, 48000)
        print(f"   {minutes} min ({os.path.getsize(path) / 2**20:5.0f} MiB file): capmill {ours:6.1f} MiB   "
              f"plain {plain:6.1f} MiB   (mono output alone {minutes * 60 * 48000 * 4 / 2**20:5.1f} MiB)")
    print(f"\n3. other decoders, the same {args.clips} FLAC clips → 16 kHz mono")
    paths = make_clips(args.cache, args.clips, args.seconds, "flac")
    ours = timed(capmill_decode, paths, 16000, args.repeats)
    try:
        theirs = timed(torchcodec_decode, paths, 16000, args.repeats)
        print(f"   torchcodec {args.clips * args.seconds / theirs:6.0f}x real time   capmill "
              f"{args.clips * args.seconds / ours:6.0f}x   capmill/torchcodec {theirs / ours:.2f}x")
    except Exception as e:  # not installed, or its native libraries do not load here
        print(f"   torchcodec: not measured ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
    print(f"\n4. CLAP-Refine rerank (rank + clap), batch of {args.batch} clips of 10 s, tiny CLAP (best of {args.repeats})")
    from capmill.testing.tiny_models import cached_tiny_models

    tiny = cached_tiny_models(os.path.join(HERE, "..", ".cache", "tiny_models"))
    rerank_cost(str(tiny), args.batch, args.repeats)


if __name__ == "__main__":
    main()
