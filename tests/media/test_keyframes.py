"""ShareGPT4Video's keyframe rule: keep a frame when it differs enough from the last kept one."""

import numpy as np
from PIL import Image

from capmill.media.keyframes import pixel_features, select_keyframes
from capmill.testing.videos import COLOURS, frame_array


def test_redundant_frames_are_dropped_and_changes_kept():
    f = np.stack([[1, 0], [0.99, 0.14], [0, 1], [0.05, 0.999], [1, 0]])
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    assert select_keyframes(f, threshold=0.9, limit=10) == [0, 2, 4]
    assert select_keyframes(f, threshold=0.9, limit=2) == [0, 4]
    # A static video still gives the minimum, evenly spread.
    static = np.tile([[1.0, 0.0]], (9, 1))
    assert select_keyframes(static, threshold=0.9, limit=10, minimum=3) == [0, 4, 8]
    assert select_keyframes(np.zeros((0, 2)), 0.9, 5) == []


def test_pixel_features_tell_shots_apart_but_not_motion_within_one():
    size = (64, 48)
    red_a = Image.fromarray(frame_array(0, COLOURS["red"], size, 0.1))
    red_b = Image.fromarray(frame_array(5, COLOURS["red"], size, 0.6))
    blue = Image.fromarray(frame_array(9, COLOURS["blue"], size, 0.1))
    f = pixel_features([red_a, red_b, blue])
    assert np.allclose(np.linalg.norm(f, axis=1), 1)
    assert f[0] @ f[1] > 0.75 > 0.1 > f[0] @ f[2]
    assert select_keyframes(f, 0.75, 10) == [0, 2]
