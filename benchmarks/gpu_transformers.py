"""The transformers backend on a CUDA GPU: a whole capmill run, and captions/s by batch size.

    python benchmarks/gpu_transformers.py --models DIR [--images 128] [--tokens 64] [--out FILE]

Two parts, both on the first CUDA device:

1. **Pipeline.** A `capmill run` of caption (ssc + dsc, tiny Qwen2-VL) then clip_score (tiny
   CLIP), every model on CUDA in bfloat16, over shards that include every hostile image and
   AltText; it checks that every sample row comes back, that good samples have both captions
   and scores and that bad ones carry a status and reason.
2. **Throughput.** A model with Qwen2-VL-2B's shapes (28 text layers of width 1536, a 32-block
   ViT, vocabulary 151,936) and random weights, saved to disk and loaded through the backend's
   real `from_pretrained` path, captions the same images at batch 1, 8, 32 and 64 with greedy
   decoding. Random weights never emit the end token, so every caption is exactly `--tokens`
   long: the figures are the cost of that many tokens per image, which is what a real model
   pays for a caption of that length. Then three prompts per image in one pass (the image
   preprocessed and encoded once for all three) against one pass per prompt. `--models` is a folder made by
   `python -m capmill.testing.tiny_models` (its Qwen2-VL tokenizer and processor are reused).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def pipeline_check(models: Path, workdir: Path, device: str = "cuda") -> dict:
    from capmill.config import parse_config
    from capmill.run import run
    from capmill.testing.shards import write_webdataset

    data = workdir / "data"
    write_webdataset(data, shards=2, per_shard=16, corrupt=True)
    out = workdir / "out"
    config = parse_config({
        "input": {"type": "webdataset", "path": f"{data}/{{00000..00001}}.tar"},
        "output": {"path": str(out), "writers": ["parquet"]},
        "executor": {"type": "local", "batch_size": 8},
        "stages": [
            {"type": "caption", "formats": ["ssc", "dsc"],
             "backend": {"type": "transformers", "model": str(models / "qwen2_vl"), "device": device,
                         "params": {"max_new_tokens": 24}}},
            {"type": "clip_score", "fields": ["alt_text", "ssc", "dsc"],
             "backend": {"type": "clip", "model": str(models / "clip"), "device": device}},
        ],
    })
    start = time.perf_counter()
    summary = run(config, force=True)
    elapsed = time.perf_counter() - start
    print(summary.render())

    import pyarrow.parquet as pq

    rows = []
    for path in sorted(out.glob("*.parquet")):
        rows += pq.read_table(path).to_pylist()
    statuses: dict[str, int] = {}
    for row in rows:
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    ok = [r for r in rows if r["status"] == "ok"]
    bad = [r for r in rows if r["status"] != "ok"]
    assert rows, "no rows written"
    assert ok, f"no sample captioned: {statuses}"
    for row in ok:
        assert row.get("caption.ssc") and row.get("caption.dsc"), f"{row['key']}: captions missing"
        assert row.get("score.clip:dsc") is not None, f"{row['key']}: scores missing"
    for row in bad:
        assert row["error"], f"{row['key']}: {row['status']} without a reason"
    return {"rows": len(rows), "statuses": statuses, "seconds": round(elapsed, 1)}


def build_qwen2_vl_2b_shape(models: Path, dest: Path, device: str = "cuda", layers: tuple[int, int] = (28, 32)) -> Path:
    """Qwen2-VL-2B's architecture with random bfloat16 weights and the tiny model's tokenizer."""
    import torch
    from transformers import AutoProcessor, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(models / "qwen2_vl")
    tok = processor.tokenizer
    ids = tok.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=layers[0],
                         num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24],
                                          "rope_theta": 1000000.0},
                         bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
                         pad_token_id=ids("<|endoftext|>"), tie_word_embeddings=True),
        vision_config=dict(depth=layers[1], embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = Qwen2VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    # A captioning budget: up to 448 × 448 pixels, 256 visual tokens per image.
    processor.image_processor.min_pixels = 224 * 224
    processor.image_processor.max_pixels = 448 * 448
    processor.image_processor.size = {"shortest_edge": 224 * 224, "longest_edge": 448 * 448}
    model.save_pretrained(dest)
    processor.save_pretrained(dest)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return dest


def throughput(model_dir: Path, images, batches: list[int], tokens: int) -> list[dict]:
    import torch

    from capmill.backends.base import GenerationParams, VLMRequest
    from capmill.backends.transformers import TransformersConfig

    prompt = "Describe this image in one detailed paragraph."
    rows = []
    for batch in batches:
        backend = TransformersConfig(model=str(model_dir), device="cuda", batch_size=batch,
                                     params=GenerationParams(max_new_tokens=tokens)).build()
        backend.load()
        requests = [VLMRequest(prompt=prompt, images=[im]) for im in images]
        backend.generate(requests[:batch])  # warm-up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        done = 0
        for i in range(0, len(requests), batch):
            out = backend.generate(requests[i:i + batch])
            done += sum(1 for g in out if g.texts)
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**30
        backend.close()
        del backend
        torch.cuda.empty_cache()
        rows.append({"batch": batch, "captions_per_s": len(requests) / elapsed,
                     "tokens_per_s": len(requests) * tokens / elapsed, "peak_gib": peak, "returned": done})
    base = rows[0]["captions_per_s"]
    print(f"\n{len(images)} images, {tokens} new tokens each, greedy, bfloat16, {torch.cuda.get_device_name()}")
    print(f"{'batch':>5} {'captions/s':>11} {'tokens/s':>9} {'× batch 1':>10} {'peak GiB':>9}")
    for r in rows:
        r["x_batch1"] = r["captions_per_s"] / base
        print(f"{r['batch']:>5} {r['captions_per_s']:>11.2f} {r['tokens_per_s']:>9.0f} {r['x_batch1']:>10.2f} "
              f"{r['peak_gib']:>9.1f}")
    return rows


FORMAT_PROMPTS = ["Write one short sentence naming the main subject of this image.",
                  "Describe this image in one detailed paragraph.",
                  "Describe every object in this image with its colour, position and count."]


def formats_one_pass(model_dir: Path, images, tokens: int, batch: int = 48, device: str = "cuda") -> dict:
    """Three prompts per image: in one pass (the three requests of an image share one image
    object, so it is preprocessed and encoded once) vs one pass per prompt, same batch size."""
    import torch

    from capmill.backends.base import GenerationParams, VLMRequest
    from capmill.backends.transformers import TransformersConfig

    backend = TransformersConfig(model=str(model_dir), device=device, batch_size=batch,
                                 params=GenerationParams(max_new_tokens=tokens)).build()
    backend.load()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    together = [VLMRequest(prompt=p, images=[im]) for im in images for p in FORMAT_PROMPTS]
    apart = [[VLMRequest(prompt=p, images=[im]) for im in images] for p in FORMAT_PROMPTS]

    def timed(groups) -> float:
        sync()
        start = time.perf_counter()
        for requests in groups:
            for i in range(0, len(requests), batch):
                backend.generate(requests[i:i + batch])
        sync()
        return time.perf_counter() - start

    timed([together[:batch]])  # warm-up
    one, separate = min(timed([together]) for _ in range(2)), min(timed(apart) for _ in range(2))
    backend.close()
    n = len(together)
    row = {"captions": n, "one_pass_s": one, "separate_s": separate, "speedup": separate / one}
    print(f"\n3 prompts × {len(images)} images, batch {batch}: one pass {n / one:.1f} captions/s, "
          f"separate {n / separate:.1f} captions/s, {separate / one:.2f}× ")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True, help="folder of tiny models")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batches", default="1,8,32,64")
    parser.add_argument("--out", default=None, help="write the figures here as JSON")
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--pipeline-only", action="store_true")
    parser.add_argument("--device", default="cuda", help="cpu runs the pipeline part alone, as a dry run")
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    models = Path(args.models)
    work = Path(tempfile.mkdtemp(prefix="capmill-gpu-"))
    if args.device == "cpu":
        print("pipeline:", pipeline_check(models, work, "cpu"))
        return
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    result: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    import transformers

    result["transformers"] = transformers.__version__
    if not args.skip_pipeline:
        result["pipeline"] = pipeline_check(models, work)
        print("pipeline:", result["pipeline"])
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2))
    if args.pipeline_only:
        return
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)) for _ in range(args.images)]
    start = time.perf_counter()
    model_dir = build_qwen2_vl_2b_shape(models, work / "qwen2_vl_2b_shape")
    result["build_seconds"] = round(time.perf_counter() - start, 1)
    result["throughput"] = throughput(model_dir, images, [int(b) for b in args.batches.split(",")], args.tokens)
    result["formats_one_pass"] = formats_one_pass(model_dir, images[:48], args.tokens)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
