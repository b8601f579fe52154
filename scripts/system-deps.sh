#!/usr/bin/env bash
# Installs the Debian packages that tests use for real: a JDK for pycocoevalcap's PTB tokenizer
# and METEOR, Chromium for the report's browser test, espeak-ng for the speech in test videos,
# ffmpeg for the decoder comparison of the video benchmark, Tesseract (with English) for the OCR
# backend, the GL/GLib libraries that opencv-python loads, and WordNet 3.0 (wordnet-base and
# wordnet-sense-index) for CAPTURE's synonym matching, which capmill copies for NLTK on first use
# (`python -m capmill.eval.wordnet`). Does nothing when all are present.
set -u
need=()
command -v java >/dev/null 2>&1 || need+=(default-jre-headless)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
command -v tesseract >/dev/null 2>&1 || need+=(tesseract-ocr tesseract-ocr-eng)
ldconfig -p 2>/dev/null | grep -q 'libGL.so.1' || need+=(libgl1)
ldconfig -p 2>/dev/null | grep -q 'libgthread-2.0.so.0' || need+=(libglib2.0-0)
[ -f /usr/share/wordnet/data.noun ] || need+=(wordnet-base)
[ -f /usr/share/wordnet/index.sense ] || need+=(wordnet-sense-index)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: cannot install ${need[*]} (needs root and apt-get); tests that use them will be skipped with a reason" >&2
  exit 0
fi
echo "system-deps: installing ${need[*]}" >&2
apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
  || echo "system-deps: apt-get install ${need[*]} failed; tests that use them will be skipped with a reason" >&2
exit 0
