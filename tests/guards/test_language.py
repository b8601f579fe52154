"""The offline language heuristic: writing system first, then stopwords, undetermined when unsure."""

import pytest

from capmill.guards.language import code_for, detect, mismatch, stopwords


@pytest.mark.parametrize(("text", "language"), [
    ("A brown dog runs across the lawn in front of a white house.", "en"),
    ("Ein brauner Hund läuft über die Wiese vor einem weißen Haus.", "de"),
    ("Un chien brun court sur la pelouse devant une maison blanche.", "fr"),
    ("Un perro marrón corre por el césped delante de una casa blanca.", "es"),
    ("Коричневая собака бежит по лужайке.", "ru"),
    ("一只棕色的狗在草地上奔跑。", "zh"),
    ("茶色の犬が芝生の上を走っている。", "ja"),
    ("갈색 개가 잔디밭을 달린다.", "ko"),
    ("Ένας καφέ σκύλος τρέχει στο γρασίδι.", "el"),
])
def test_detects_common_languages(text, language):
    assert detect(text) == language


@pytest.mark.parametrize("text", ["dog, grass, sky", "A dog.", "OK", "12345", "", "Brandenburger Tor"])
def test_short_or_ambiguous_texts_are_undetermined_and_pass(text):
    assert mismatch(text, "en") is None


def test_mismatch_needs_clear_evidence():
    assert mismatch("Ein brauner Hund sitzt neben einer Bank und wartet auf den Bus.", "en")
    assert mismatch("A sign reading 'Bitte nicht rauchen' hangs next to the door of the station.", "en") is None
    assert mismatch("A blue street sign reading \"Тверская улица\" on the corner of a building.", "en") is None
    assert "Cyrillic" in mismatch("Собака сидит на скамейке возле дома.", "en")
    assert mismatch("Собака сидит на скамейке возле дома.", "ru") is None
    assert mismatch("anything", "xx") is None  # unknown codes are never checked


def test_names_and_codes():
    assert code_for("German") == code_for("de") == "de" and code_for("Klingon") is None and code_for(None) is None
    lists = stopwords()
    assert all(not (lists[a] & lists[b]) for a in lists for b in lists if a != b)  # shared words count for none
