"""The decode step of every executor: read a sample's bytes, decode with hygiene, record failures.

A sample whose bytes cannot be read becomes `read_error`, one whose bytes are not an acceptable
image `decode_error`; either way it keeps its row and the batch goes on.
"""

from __future__ import annotations

import time

from capmill.errors import SampleError
from capmill.media.image import ImageConfig, decode_image, prepare_image
from capmill.sample import DECODE_ERROR, READ_ERROR, Sample


def decode_batch(batch: list[Sample], config: ImageConfig) -> float:
    """Decode every image in place; failures become the sample's status. Returns seconds spent."""
    start = time.perf_counter()
    if config.decode:
        for sample in batch:
            decode_one(sample, config)
    return time.perf_counter() - start


def decode_one(sample: Sample, config: ImageConfig) -> None:
    if not sample.ok:
        return
    ref = sample.image
    if ref.data is None and ref.path is None and ref.url is None:
        if ref.image is None:
            sample.fail(DECODE_ERROR, "sample has no image")
            return
        try:  # handed over decoded (the Python API): the same checks and normalisation
            ref.image = prepare_image(ref.image, config)
        except SampleError as e:
            sample.fail(e.status, e.reason)
        return
    try:
        data = ref.read_bytes()
    except SampleError as e:  # a refused or failed download: its reason already names the URL
        sample.fail(e.status, e.reason)
        return
    except Exception as e:  # file systems raise their own types (HTTP, S3 clients)
        sample.fail(READ_ERROR, f"could not read image {ref.path or ref.url}: {type(e).__name__}: {e}")
        return
    try:
        ref.image = decode_image(data, config)
    except SampleError as e:
        sample.fail(e.status, e.reason)
    else:
        sample.meta.setdefault("decoded_size", list(ref.image.size))
