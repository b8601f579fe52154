"""Which kind of media a file is, from its extension or its first bytes.

Readers call `kind_of` on a member's or a path's extension; bytes without a usable extension (a
parquet cell, a download) are sniffed by their magic numbers. Audio extensions are listed so the
one table says what each kind is; readers accept audio once audio decoding exists.
"""

from __future__ import annotations

from capmill.sample import AUDIO, IMAGE, VIDEO

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
VIDEO_EXTS = ("mp4", "webm", "mkv", "mov")
AUDIO_EXTS = ("wav", "flac", "mp3", "ogg", "m4a")
# What readers take as a sample's media today.
READABLE_EXTS = IMAGE_EXTS + VIDEO_EXTS

_KIND = {**dict.fromkeys(IMAGE_EXTS, IMAGE), **dict.fromkeys(VIDEO_EXTS, VIDEO), **dict.fromkeys(AUDIO_EXTS, AUDIO)}


def kind_of(ext: str | None) -> str | None:
    """The media kind of a lower-case extension, or None when it is none of ours."""
    return _KIND.get((ext or "").lower())


def sniff_video_ext(data: bytes | None) -> str | None:
    """The extension of encoded video bytes from their container signature (None if unknown).

    ISO base media files (mp4, mov) carry an `ftyp` box at byte 4, its brand telling QuickTime
    from MP4; Matroska and WebM both start with the EBML magic and name their doctype early on.
    """
    if not data or len(data) < 12:
        return None
    if data[4:8] == b"ftyp":
        return "mov" if data[8:12] == b"qt  " else "mp4"
    if data[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip"):
        return "mov"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "webm" if b"webm" in data[:64] else "mkv"
    return None


def sniff(data: bytes | None) -> tuple[str | None, str | None]:
    """(kind, extension) of encoded bytes, from their magic numbers; (None, None) if unknown."""
    from capmill.media.image import sniff_ext

    ext = sniff_ext(data)
    if ext is not None:
        return IMAGE, ext
    ext = sniff_video_ext(data)
    if ext is not None:
        return VIDEO, ext
    return None, None
