import resource

import numpy as np
import pytest
from PIL import Image

from capmill.errors import ImageDecodeError
from capmill.media.image import ImageConfig, decode_image, sniff_ext
from capmill.testing import generated, hostile_images
from capmill.testing.shards import encode, exif_rotated_jpeg, png_header_only

HOSTILE = hostile_images()
CFG = ImageConfig(max_side=None)


@pytest.mark.parametrize("name,reason", [
    ("truncated", "truncated"),
    ("zero_bytes", "empty file"),
    ("not_an_image", "not a recognised image"),
    ("bomb_header", "pixel limit"),
])
def test_bad_images_raise_with_reason(name, reason):
    with pytest.raises(ImageDecodeError, match=reason) as e:
        decode_image(HOSTILE[name][0], CFG)
    assert e.value.status == "decode_error"


def test_bomb_refused_before_decoding():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageDecodeError, match="pixel limit"):
        decode_image(png_header_only(30000, 30000), ImageConfig())
    with pytest.raises(ImageDecodeError, match="8000x8000 = 64000000 pixels"):
        decode_image(png_header_only(8000, 8000), ImageConfig())
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 200_000  # decoding would need 2.7 GB


@pytest.mark.parametrize("name", ["cmyk", "sixteen_bit", "palette_alpha", "rgba", "exif_rotated", "gif_animated"])
def test_awkward_images_become_rgb(name):
    img = decode_image(HOSTILE[name][0], CFG)
    assert img.mode == "RGB"


def test_alpha_goes_over_white():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    img = decode_image(encode(rgba, "PNG"), CFG)
    assert img.getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_uses_full_range():
    arr = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    img = decode_image(encode(Image.fromarray(arr), "PNG"), CFG)
    values = np.asarray(img)[..., 0]
    assert values.min() == 0 and values.max() == 255


def test_exif_orientation_applied():
    base = generated(3, (80, 40))
    img = decode_image(exif_rotated_jpeg(base, 6), CFG)
    assert img.size == (40, 80)  # rotated 90°


def test_resize_bounds_longest_side_and_keeps_aspect():
    img = decode_image(encode(generated(1, (640, 480))), ImageConfig(max_side=384))
    assert max(img.size) == 384 and abs(img.size[0] / img.size[1] - 640 / 480) < 0.02


def test_disallowed_format():
    with pytest.raises(ImageDecodeError, match="not allowed"):
        decode_image(encode(generated(1), "BMP"), ImageConfig(formats=["JPEG"]))


def test_sniff_ext():
    assert sniff_ext(encode(generated(1), "JPEG")) == "jpg"
    assert sniff_ext(encode(generated(1), "PNG")) == "png"
    assert sniff_ext(encode(generated(1), "WEBP")) == "webp"
    assert sniff_ext(b"hello") is None and sniff_ext(b"") is None
