"""Scene cuts with PySceneDetect's adaptive detector, fed with frames PyAV decodes.

PySceneDetect's `AdaptiveDetector` compares each frame's content change (hue, saturation,
luma) with the average change of its neighbours, so a cut is a change much larger than the
motion around it; fast camera moves, which change every frame a lot, do not read as cuts the
way they do with a fixed threshold. Frames are shrunk to `analysis_side` pixels in the same
swscale call that converts them to BGR, which leaves hard cuts as clear and makes detection a
small cost next to decoding. Every frame of the window is decoded: a cut can be anywhere.
"""

from __future__ import annotations

from typing import Any

from capmill.errors import SetupError
from capmill.media.sampling import SceneConfig


def _detector(config: SceneConfig, fps: float):
    try:
        from scenedetect.detectors import AdaptiveDetector
    except ImportError:
        raise SetupError("scene sampling needs PySceneDetect: install it with `pip install 'capmill[video]'`") from None
    return AdaptiveDetector(adaptive_threshold=config.threshold, min_scene_len=max(1, round(config.min_scene_seconds * fps)),
                            window_width=config.window, min_content_val=config.min_content)


def detect_cuts(container: Any, stream: Any, clock: Any, config: SceneConfig, window: tuple[float, float],
                deadline: Any) -> list[float]:
    """Times (stream seconds) of the scene cuts inside `window`; the container is rewound after."""
    from scenedetect.common import FrameTimecode

    fps = 1.0 / clock.period
    detector = _detector(config, fps)
    start, end = window
    if start > 0:
        container.seek(max(clock.start, clock.pts(start)), stream=stream, backward=True, any_frame=False)
    times: list[float] = []
    cuts: list[int] = []
    size = None
    number = -1
    for frame in container.decode(stream):
        t = clock.seconds(frame.pts)
        t = t if t is not None else (times[-1] + clock.period if times else start)
        if t < start - 1e-4:
            continue
        if t >= end:
            break
        if size is None:
            scale = min(1.0, config.analysis_side / max(frame.width, frame.height))
            size = (max(2, round(frame.width * scale)), max(2, round(frame.height * scale)))
        number += 1
        if number % 32 == 0:
            deadline.check("detecting scene cuts")
        times.append(t)
        image = frame.to_ndarray(format="bgr24", width=size[0], height=size[1])
        cuts.extend(tc.frame_num for tc in detector.process_frame(FrameTimecode(number, fps=fps), image))
    if number >= 0:
        cuts.extend(tc.frame_num for tc in detector.post_process(FrameTimecode(number, fps=fps)))
    container.seek(clock.start, stream=stream, backward=True, any_frame=False)
    return sorted({times[n] for n in cuts if 0 < n < len(times)})
