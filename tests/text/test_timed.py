"""HowToCaption's two text ends: narration in word blocks, captions with times parsed back."""

from capmill.text.timed import TimedText, format_seconds, parse_timed_lines, word_blocks


def test_word_blocks_keep_segments_whole_and_in_order():
    segments = [TimedText(i * 2.0, i * 2.0 + 2, " ".join(["w"] * 30)) for i in range(10)]
    blocks = word_blocks(segments, max_words=100)
    assert [len(b.segments) for b in blocks] == [3, 3, 3, 1]
    assert blocks[1].start == 6.0 and blocks[1].end == 12.0 and blocks[1].words == 90
    # A segment over the budget is a block of its own; empty ones are skipped.
    long = [TimedText(0, 1, " ".join(["w"] * 300)), TimedText(1, 2, "  "), TimedText(2, 3, "short")]
    assert [b.words for b in word_blocks(long, 100)] == [300, 1]


def test_times_in_every_common_shape():
    text = "\n".join([
        "12s: A person slices a pepper.",
        "[15 s] The pan heats up.",
        "(17.5 sec) Oil goes in.",
        "- 20: Onions are added.",
        "00:25 - The dish is stirred.",
        "1:02:03 Served on a plate.",
    ])
    got = parse_timed_lines(text, start=10, end=4000)
    assert [(t.start, t.text) for t in got] == [
        (12, "A person slices a pepper."), (15, "The pan heats up."), (17.5, "Oil goes in."),
        (20, "Onions are added."), (25, "The dish is stirred."), (3723, "Served on a plate."),
    ]
    assert [t.end for t in got] == [15, 17.5, 20, 25, 3723, 4000]


def test_times_are_clamped_into_the_block_and_untimed_lines_attach():
    got = parse_timed_lines("Intro line without time\n5s: early\ncontinues here\n99s: late\n\n", start=10, end=30)
    assert [(t.start, t.text) for t in got] == [(10, "Intro line without time"), (10, "early continues here"), (30, "late")]
    assert parse_timed_lines("", 0, 5) == []


def test_format_seconds():
    assert format_seconds(12.0) == "12s" and format_seconds(12.5) == "12.5s"
