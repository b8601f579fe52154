"""ScaleCap's golden-sentence filter on fixed logits, against results worked out by hand."""

import pytest

from capmill.backends.base import Word
from capmill.verify.golden import content_mask, golden_sentences, masked_gaps

# "A red car is parked, a unicorn flies above. Two trees stand."
TOKENS = ["A", " red", " car", " is", " parked", ",", " a", " unicorn", " flies", " above", ".",
          " Two", " trees", " stand", "."]
# Logit of each written token with the image and without it.
WITH = [1.0, 5.0, 6.0, 2.0, 3.0, 0.5, 1.0, 2.0, 2.5, 1.0, 0.2, 3.0, 4.0, 2.0, 0.1]
WITHOUT = [1.5, 4.0, 6.5, 1.0, 3.5, 0.5, 0.5, 4.0, 3.0, 0.0, 0.2, 3.5, 4.5, 2.5, 0.1]
# Parts of speech of each token, as a tagger gives them.
POS = ["DET", "ADJ", "NOUN", "AUX", "VERB", "PUNCT", "DET", "NOUN", "VERB", "ADV", "PUNCT", "NUM", "NOUN", "VERB",
       "PUNCT"]


def words_of(tokens, tags):
    out, offset = [], 0
    for token, tag in zip(tokens, tags):
        lead = len(token) - len(token.lstrip())
        out.append(Word(offset + lead, offset + len(token), token.strip(), pos=tag))
        offset += len(token)
    return out


def test_gaps_are_masked_to_content_words():
    mask = content_mask(TOKENS, words_of(TOKENS, POS))
    assert mask == [False, True, True, False, True, False, False, True, True, True, False, True, True, True, False]
    gaps = masked_gaps(WITH, WITHOUT, mask)
    # by hand: red +1, car -0.5, parked -0.5; unicorn -2, flies -0.5, above +1; Two -0.5, trees -0.5, stand -0.5
    assert gaps == [0.0, 1.0, -0.5, 0.0, -0.5, 0.0, 0.0, -2.0, -0.5, 1.0, 0.0, -0.5, -0.5, -0.5, 0.0]


def test_clauses_kept_by_their_largest_gap():
    gaps = masked_gaps(WITH, WITHOUT, content_mask(TOKENS, words_of(TOKENS, POS)))
    result = golden_sentences(TOKENS, gaps, threshold=0.0)
    # sentence 1: "A red car is parked" max 1.0 kept; "a unicorn flies above" max 1.0 (above) kept.
    # sentence 2: "Two trees stand": every word is a content word at -0.5 → max -0.5 → dropped.
    assert [[(c.text, c.max_gap, c.kept) for c in s.clauses] for s in result.sentences] == [
        [("A red car is parked", 1.0, True), ("a unicorn flies above", 1.0, True)],
        [("Two trees stand", -0.5, False)],
    ]
    assert result.kept == ["A red car is parked, a unicorn flies above."]
    assert not result.whole
    # a higher threshold drops the whole caption's clauses, so it is kept whole
    strict = golden_sentences(TOKENS, gaps, threshold=1.0)
    assert strict.whole and strict.kept == ["A red car is parked, a unicorn flies above. Two trees stand."]
    assert strict.meta()["dropped_clauses"] == 3


def test_a_clause_goes_while_its_sentence_stays():
    # only "above" changes: now no content word of the second clause gains from the image
    with_image = list(WITH)
    with_image[9] = -1.0
    gaps = masked_gaps(with_image, WITHOUT, content_mask(TOKENS, words_of(TOKENS, POS)))
    result = golden_sentences(TOKENS, gaps)
    assert result.kept == ["A red car is parked."]
    meta = result.meta()
    assert [c["kept"] for c in meta["clauses"]] == [True, False, False]
    assert meta["clauses"][1] == {"text": "a unicorn flies above", "max_gap": 0.0, "kept": False, "sentence": 0}


def test_negative_threshold_counts_function_words_as_zero():
    gaps = masked_gaps(WITH, WITHOUT, content_mask(TOKENS, words_of(TOKENS, POS)))
    # "Two trees stand" has max -0.5 (the "." is no part of the clause): -0.5 > -0.6 keeps it
    result = golden_sentences(TOKENS, gaps, threshold=-0.6)
    assert result.kept == ["A red car is parked, a unicorn flies above.", "Two trees stand."]


def test_line_breaks_questions_numbers_and_a_last_sentence_without_a_mark():
    tokens = ["It", " costs", " 3", ".", "5", " dollars", "?", "\n", "A", " cat", "!", " The", " end"]
    gaps = [1, 1, 1, 0, 1, 1, 0, 0, -1, -1, 0, 1, 1]
    result = golden_sentences(tokens, [float(g) for g in gaps])
    assert [s.text for s in result.sentences] == ["It costs 3.5 dollars?", "A cat!", "The end."]
    assert result.kept == ["It costs 3.5 dollars?", "The end."]


def test_marks_glued_to_words_and_empty_clauses():
    tokens = ["Dogs", " run", ",", ",", " cats", " sleep.", " Birds", " sing,", " loudly"]
    gaps = [1.0, 0.0, 0.0, 0.0, -1.0, -1.0, -1.0, -1.0, 2.0]
    result = golden_sentences(tokens, gaps)
    assert [[c.text for c in s.clauses] for s in result.sentences] == [["Dogs run", "cats sleep"], ["Birds sing", "loudly"]]
    assert result.kept == ["Dogs run.", "loudly."]


def test_nothing_to_rate():
    result = golden_sentences([], [])
    assert result.whole and result.kept == [] and result.text == ""
    only_marks = golden_sentences([".", "\n", "."], [0.0, 0.0, 0.0])
    assert only_marks.sentences == [] and only_marks.whole
    # a clause of function words only has max gap 0 (they are masked to 0), never -inf
    assert golden_sentences(["the", "."], [0.0, 0.0]).sentences[0].clauses[0].max_gap == 0.0
    with pytest.raises(ValueError, match="2 tokens but 1 gaps"):
        golden_sentences(["a", "b"], [0.0])
    with pytest.raises(ValueError, match="lengths differ"):
        masked_gaps([1.0], [1.0, 2.0], [True])


def test_split_words_share_their_tag():
    tokens = ["A", " bicy", "cle", " ", "leans"]
    words = [Word(0, 1, "A", pos="DET"), Word(2, 9, "bicycle", pos="NOUN"), Word(10, 15, "leans", pos="VERB")]
    assert content_mask(tokens, words) == [False, True, True, False, True]
