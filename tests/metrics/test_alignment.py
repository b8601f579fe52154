"""HowToCaption's alignment: each caption moves to the window whose frames match it best."""

import numpy as np

from capmill.metrics.alignment import align, window_embedding


def onehot(i, d=4):
    v = np.zeros(d)
    v[i] = 1.0
    return v


def test_each_caption_finds_the_window_showing_what_it_says():
    # 30 s at 1 fps: seconds 0-9 show thing 0, 10-19 thing 1, 20-29 thing 2.
    times = list(range(30))
    frames = np.stack([onehot(t // 10) for t in times])
    # Said at 8 s about thing 1 (narration runs ahead of the picture), at 25 s about thing 2.
    got = align([8.0, 25.0], np.stack([onehot(1), onehot(2)]), times, frames, duration=30, clip_seconds=8, offset=10)
    assert got[0].start >= 10 and got[0].end <= 20 and got[0].score > 0.99
    assert got[1].start >= 20 and got[1].score > 0.99


def test_a_caption_about_nothing_on_screen_scores_low():
    times = list(range(20))
    frames = np.stack([onehot(0) for _ in times])
    got = align([10.0], np.stack([onehot(3)]), times, frames, duration=20, clip_seconds=8, offset=10)
    assert abs(got[0].score) < 1e-9


def test_windows_stay_inside_a_short_video():
    times = [0.5, 1.5, 2.5]
    frames = np.stack([onehot(0)] * 3)
    got = align([1.0], np.stack([onehot(0)]), times, frames, duration=3, clip_seconds=8, offset=10)
    assert got[0].start == 0 and got[0].end == 3


def test_window_embedding_falls_back_to_the_nearest_frame():
    emb = window_embedding(np.array([0.0, 10.0]), np.stack([onehot(0), onehot(1)]), 8.0, 9.0)
    assert np.allclose(emb, onehot(1))
