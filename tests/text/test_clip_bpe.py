"""capmill's torch-free CLIP token count equals open_clip's tokenizer."""

import random
import subprocess
import sys

import pytest

from capmill.testing.hostile import hostile_alt_texts
from capmill.text.clip_bpe import clip_bpe, count_clip_tokens


def _texts():
    rng = random.Random(0)
    words = ("a photo of the red dog's ball, running; across 3 fields — naïve café ÉLAN "
             "don't WE'LL 12.5% <b>bold</b> &amp; &lt;tag&gt; 日本語 中文 한국어 🐱🇫🇷 "
             "Ã© <start_of_text> <END_OF_TEXT> http://x.y/z?q=1 tab\tnew\nline").split(" ")
    texts = [t.text for t in hostile_alt_texts()]
    texts += [" ".join(rng.choice(words) for _ in range(rng.randrange(0, 40))) for _ in range(400)]
    alphabet = [chr(c) for c in [*range(32, 127), *range(160, 400), 0x2014, 0x3042, 0x1F600, 0x200B, 0xFEFF]]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 60))) for _ in range(400)]
    return texts


def test_counts_equal_open_clip_on_hostile_random_and_multilingual_text():
    from open_clip.tokenizer import SimpleTokenizer

    reference = SimpleTokenizer()
    bpe = clip_bpe()
    mismatches = [t for t in _texts() if bpe.count(t) != len(reference.encode(t))]
    assert mismatches == []
    assert count_clip_tokens("a photo of a cat") == 7  # 5 + start and end


def test_counting_imports_no_torch():
    code = "import sys; from capmill.text.clip_bpe import count_clip_tokens; count_clip_tokens('a cat'); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


@pytest.mark.parametrize("text", ["", "   ", "\x00\x01"])
def test_empty_and_control_only_texts_are_two_tokens(text):
    assert count_clip_tokens(text) == 2
