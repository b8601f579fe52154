"""Builders of test data: real photos, generated images, hostile files, and shards of every format.

Used by capmill's tests and benchmarks, and by anyone testing their own stages:

    from capmill.testing import write_webdataset
    paths = write_webdataset(tmp_path / "data", shards=3, per_shard=8, corrupt=True)

Real photos come from scikit-image's bundled sample images (no download). AltTexts are short,
web-like descriptions; they are fixtures, not ground truth.

`python -m capmill.testing.demo_data DIR` writes the demo shards into DIR.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

# scikit-image sample → web-style AltText.
PHOTOS = {
    "astronaut": "NASA portrait of astronaut Eileen Collins in her flight suit",
    "coffee": "Cup of coffee with latte art on a saucer",
    "chelsea": "Chelsea the tabby cat looking at the camera",
    "rocket": "Falcon 9 rocket launch from Cape Canaveral",
    "camera": "black and white photo of a photographer with his camera on a tripod",
    "coins": "old Greek coins on a dark background",
    "immunohistochemistry": "microscope image of stained tissue",
    "hubble_deep_field": "Hubble Deep Field galaxies",
    "logo": "scikit-image logo",
    "retina": "retina fundus photograph",
    "colorwheel": "RGB colour wheel",
    "page": "scanned page of printed text",
    "clock": "wall clock motion blur",
    "brick": "red brick wall texture",
    "moon": "surface of the moon",
}


@dataclass(slots=True)
class Item:
    key: str
    data: bytes
    ext: str
    alt_text: str | bytes | None
    meta: dict


def photo(name: str) -> Image.Image:
    """A scikit-image sample photo as a PIL image (its own mode: RGB, L or RGBA)."""
    import skimage.data

    arr = getattr(skimage.data, name)()
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    return Image.fromarray(arr)


def generated(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A smooth random RGB image: gradients plus a few shapes, cheap and distinct per seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0, 255, 3)
    slope = rng.uniform(-1.5, 1.5, (3, 2))
    arr = np.stack([base[c] + slope[c, 0] * x + slope[c, 1] * y for c in range(3)], axis=-1)
    for _ in range(3):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(5, max(6, min(w, h) / 3))
        mask = (x - cx) ** 2 + (y - cy) ** 2 < r**2
        arr[mask] = rng.uniform(0, 255, 3)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG" and img.mode not in ("RGB", "L", "CMYK"):
        img = img.convert("RGB")
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height but holds one tiny data chunk: a decompression bomb's
    header, a few dozen bytes on disk."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def exif_rotated_jpeg(img: Image.Image, orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img.convert("RGB"), "JPEG", exif=exif.tobytes())


def hostile_images() -> dict[str, tuple[bytes, str]]:
    """name → (bytes, ext) for every kind of bad or awkward image the hygiene step must handle."""
    base = generated(7, (64, 48))
    good = encode(base, "JPEG")
    pal = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    arr16 = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    return {
        "truncated": (good[: len(good) // 2], "jpg"),
        "zero_bytes": (b"", "jpg"),
        "not_an_image": (b"<html><body>404 Not Found</body></html>", "jpg"),
        "bomb_header": (png_header_only(30000, 30000), "png"),
        "cmyk": (encode(base.convert("CMYK"), "JPEG"), "jpg"),
        "sixteen_bit": (encode(Image.fromarray(arr16), "PNG"), "png"),
        "palette_alpha": (encode(pal, "PNG"), "png"),
        "rgba": (encode(rgba, "PNG"), "png"),
        "exif_rotated": (exif_rotated_jpeg(base, 6), "jpg"),
        "gif_animated": (_animated_gif(), "gif"),
    }


def _animated_gif() -> bytes:
    frames = [generated(i, (32, 32)).convert("P") for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


# Region boxes a record may carry (normalised [x0, y0, x1, y1], bare or with a score and a label),
# for the region-caption stage; the last is too small to caption at the test images' size.
BOXES = [[0.05, 0.1, 0.6, 0.8], {"box": [0.4, 0.3, 0.95, 0.9], "score": 0.8, "label": "shape"},
         {"bbox": [0.0, 0.0, 0.05, 0.05], "score": 0.1}]


def items(n: int, start: int = 0, photos: bool = True, size: tuple[int, int] = (96, 72), prefix: str = "",
          boxes: bool = False) -> Iterator[Item]:
    """n samples: real photos first (when asked), then generated images, keys `{prefix}{i:06d}`;
    with `boxes`, each KEY.json also holds `boxes` (BOXES)."""
    names = list(PHOTOS) if photos else []
    for i in range(start, start + n):
        if i < len(names):
            img = photo(names[i])
            data, alt = encode(img, "PNG" if img.mode == "RGBA" else "JPEG"), PHOTOS[names[i]]
            ext = "png" if img.mode == "RGBA" else "jpg"
            meta = {"source": f"skimage.data.{names[i]}"}
        else:
            data, ext, alt = encode(generated(i, size), "JPEG", quality=85), "jpg", f"image number {i} with shapes"
            meta = {"source": "generated"}
        key = f"{prefix}{i:06d}"
        if boxes:
            meta["boxes"] = BOXES
        yield Item(key, data, ext, alt, {**meta, "key": key, "url": f"https://example.com/{key}.{ext}"})


def corrupt_items(prefix: str = "bad_") -> Iterator[Item]:
    for name, (data, ext) in hostile_images().items():
        yield Item(f"{prefix}{name}", data, ext, f"hostile image: {name}", {"source": "hostile"})
    yield Item(f"{prefix}alt_empty", encode(generated(1)), "jpg", "", {})
    yield Item(f"{prefix}alt_huge", encode(generated(2)), "jpg", "word " * 200_000, {})
    yield Item(f"{prefix}alt_invalid_utf8", encode(generated(3)), "jpg", b"caf\xe9 \xff\xfe", {})
    yield Item(f"{prefix}alt_control", encode(generated(4)), "jpg", "a\x00b\x07c\x1b[31mred\x1b[0m\u202etxt", {})


def _alt_bytes(alt: str | bytes | None) -> bytes | None:
    return alt.encode("utf-8") if isinstance(alt, str) else alt


def write_tar(path: str | os.PathLike, samples: Iterable[Item], extra_members: dict[str, bytes] | None = None) -> str:
    """One webdataset shard as img2dataset writes it: KEY.EXT, KEY.txt, KEY.json."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with tarfile.open(path, "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for it in samples:
            add(f"{it.key}.{it.ext}", it.data)
            alt = _alt_bytes(it.alt_text)
            if alt is not None:
                add(f"{it.key}.txt", alt)
            add(f"{it.key}.json", json.dumps(it.meta).encode())
        for name, data in (extra_members or {}).items():
            add(name, data)
    return path


def write_webdataset(directory: str | os.PathLike, shards: int = 3, per_shard: int = 8, corrupt: bool = False,
                     photos: bool = True, size: tuple[int, int] = (96, 72), boxes: bool = False) -> list[str]:
    """`shards` tar files `00000.tar` … in `directory`; with `corrupt`, the last shard also holds
    every hostile image and AltText; with `boxes`, every KEY.json holds region boxes."""
    directory = os.fspath(directory)
    paths = []
    for s in range(shards):
        samples = list(items(per_shard, start=s * per_shard, photos=photos, size=size, boxes=boxes))
        if corrupt and s == shards - 1:
            samples += list(corrupt_items())
        paths.append(write_tar(os.path.join(directory, f"{s:05d}.tar"), samples))
    return paths


def write_parquet(path: str | os.PathLike, samples: Iterable[Item], row_group_size: int = 8) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = list(samples)
    table = pa.table({
        "key": [r.key for r in rows],
        "image": pa.array([r.data for r in rows], type=pa.binary()),
        "caption": [r.alt_text.decode("utf-8", "replace") if isinstance(r.alt_text, bytes) else r.alt_text for r in rows],
    })
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def write_folder(directory: str | os.PathLike, samples: Iterable[Item], caption_ext: str = "txt") -> str:
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    for it in samples:
        with open(os.path.join(directory, f"{it.key}.{it.ext}"), "wb") as f:
            f.write(it.data)
        alt = _alt_bytes(it.alt_text)
        if alt is not None:
            with open(os.path.join(directory, f"{it.key}.{caption_ext}"), "wb") as f:
                f.write(alt)
    return directory


def write_jsonl(path: str | os.PathLike, samples: Iterable[Item], image_dir: str = "images") -> str:
    """A manifest plus an image folder beside it; image paths are relative to the manifest."""
    path = os.fspath(path)
    base = os.path.dirname(path) or "."
    os.makedirs(os.path.join(base, image_dir), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for it in samples:
            rel = f"{image_dir}/{it.key}.{it.ext}"
            with open(os.path.join(base, rel), "wb") as img:
                img.write(it.data)
            alt = it.alt_text.decode("utf-8", "replace") if isinstance(it.alt_text, bytes) else it.alt_text
            f.write(json.dumps({"key": it.key, "image_path": rel, "alt_text": alt}) + "\n")
    return path

