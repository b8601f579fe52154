"""The pure rules of frame and clip sampling: timestamps in, timestamps out."""

import pytest

from capmill.media.sampling import (
    SamplingConfig,
    clip_windows,
    fps_times,
    keyframe_times,
    sample_times,
    scene_times,
    scenes_of,
    thin,
    uniform_times,
)


def test_uniform_takes_the_centres_of_equal_parts():
    assert uniform_times(0, 8, 4) == [1, 3, 5, 7]
    assert uniform_times(2, 4, 1) == [3]


def test_fps_is_capped_by_spreading_fewer_frames_over_the_same_window():
    assert fps_times(0, 4, 1, limit=10) == [0.5, 1.5, 2.5, 3.5]
    assert fps_times(0, 100, 1, limit=4) == uniform_times(0, 100, 4)
    assert fps_times(0, 0.2, 1, limit=4) == [0.5]  # a window shorter than a period still gives a frame


def test_thin_keeps_first_and_last_and_spreads_the_rest():
    assert thin(list(range(10)), 4) == [0, 3, 6, 9]
    assert thin([1, 2], 5) == [1, 2]
    assert thin(list(range(9)), 1) == [4]


def test_keyframes_inside_the_window_thinned():
    keys = [0, 2, 4, 6, 8, 10]
    assert keyframe_times(keys, 3, 9, limit=10) == [4, 6, 8]
    assert keyframe_times(keys, 0, 12, limit=3) == [0, 4, 10]
    assert keyframe_times([], 0, 10, limit=3) == [5]  # no keyframe: the centre


def test_scenes_split_at_inner_cuts_and_frames_per_scene():
    assert scenes_of([3, 7, 20], 0, 12) == [(0, 3), (3, 7), (7, 12)]
    assert scene_times([3, 7], 0, 12, per_scene=1, limit=10) == [1.5, 5, 9.5]
    assert scene_times([3, 7], 0, 12, per_scene=2, limit=10) == [0.75, 2.25, 4, 6, 8.25, 10.75]
    assert len(scene_times([3, 7], 0, 12, per_scene=2, limit=3)) == 3


def test_every_mode_is_capped_at_max_frames():
    for mode in ("uniform", "fps", "keyframes", "scenes"):
        cfg = SamplingConfig(mode=mode, frames=50, fps=10, max_frames=5, per_scene=10)
        assert len(sample_times(cfg, 0, 60, keyframes=list(range(60)), cuts=[10, 20, 30])) <= 5


def test_fixed_clip_windows_with_a_short_tail_merged():
    assert clip_windows(65, 30, 10) == [(0, 30), (30, 65)]
    assert clip_windows(75, 30, 10) == [(0, 30), (30, 60), (60, 75)]
    assert clip_windows(0, 30, 1) == []


def test_fixed_windows_snap_to_nearby_keyframes_only():
    windows = clip_windows(60, 20, 1, keyframes=[0, 18, 41, 50], snap=5)
    assert windows == [(0, 18), (18, 41), (41, 60)]
    assert clip_windows(60, 20, 1, keyframes=[0, 10, 50], snap=5) == [(0, 20), (20, 40), (40, 60)]


def test_scene_windows_cut_long_scenes_and_merge_short_ones():
    windows = clip_windows(100, 30, 2, cuts=[10, 11, 80])
    assert windows[0] == (0, 11)  # the 1 s scene joins the one before it
    assert windows[-1] == (80, 100)
    assert all(b - a <= 30 + 1e-9 for a, b in windows[1:])
    assert windows[1][0] == 11 and windows[-2][1] == 80


def test_clip_count_limit_leaves_the_rest_out():
    assert len(clip_windows(1000, 10, 1, limit=5)) == 5


@pytest.mark.parametrize("bad", [{"frames": 0}, {"fps": 0}, {"mode": "random"}, {"extra": 1}])
def test_sampling_config_is_strict(bad):
    with pytest.raises(ValueError):
        SamplingConfig(**bad)
