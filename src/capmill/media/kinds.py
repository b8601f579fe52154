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
# What readers take as a sample's media.
READABLE_EXTS = IMAGE_EXTS + VIDEO_EXTS + AUDIO_EXTS

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
    if data[4:8] == b"ftyp" and data[8:12] in _AUDIO_BRANDS:
        return None  # an MP4 that holds sound only (.m4a): see sniff_audio_ext
    if data[4:8] == b"ftyp":
        return "mov" if data[8:12] == b"qt  " else "mp4"
    if data[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip"):
        return "mov"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "webm" if b"webm" in data[:64] else "mkv"
    return None


# ISO base media brands of audio-only files (iTunes and MPEG-4 audio).
_AUDIO_BRANDS = (b"M4A ", b"M4B ", b"M4P ", b"F4A ")


def sniff_audio_ext(data: bytes | None) -> str | None:
    """The extension of encoded audio bytes from their signature (None if unknown): RIFF/WAVE
    (and the 64-bit RF64), FLAC, Ogg, MP3 (an ID3 tag or an MPEG audio frame header) and
    audio-only MP4 (`ftyp` with an M4A brand)."""
    if not data or len(data) < 12:
        return None
    if data[:4] in (b"RIFF", b"RF64") and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"fLaC":
        return "flac"
    if data[:4] == b"OggS":
        return "ogg"
    if data[4:8] == b"ftyp" and data[8:12] in _AUDIO_BRANDS:
        return "m4a"
    if data[:3] == b"ID3":
        return "mp3"
    # An MPEG-1/2 layer III frame header: 11 sync bits, a layer field of 01, a valid bitrate and rate.
    if data[0] == 0xFF and (data[1] & 0xE6) == 0xE2 and (data[2] & 0xF0) != 0xF0 and (data[2] & 0x0C) != 0x0C:
        return "mp3"
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
    ext = sniff_audio_ext(data)
    if ext is not None:
        return AUDIO, ext
    return None, None
