"""Regenerate the report's layout golden (tests/eval/golden/) after an intended layout change.

    .venv/bin/python scripts/report_golden.py

Builds the fixed report the test builds, measures it in headless Chromium and writes
tests/eval/golden/report_layout.json (region boxes and element counts) and report_blocks.png
(the coarse screenshot the test compares with). The full screenshot is written to
tests/eval/golden/report_full.png.tmp for a look; it is not committed.
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    import numpy as np
    from PIL import Image

    from tests.eval import layout

    if layout.chromium() is None:
        print("Chromium is not installed: bash scripts/system-deps.sh", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        page = layout.build_page(work)
        geometry = layout.measure(page, work)
        grey, shot = layout.blocks(page, work)
        layout.GOLDEN.mkdir(exist_ok=True)
        (layout.GOLDEN / "report_layout.json").write_text(json.dumps(geometry, indent=1) + "\n")
        Image.fromarray(np.round(grey).astype(np.uint8), "L").save(layout.GOLDEN / "report_blocks.png")
        shutil.copy(shot, layout.GOLDEN / "report_full.png.tmp")
    print(f"golden written to {layout.GOLDEN}; look at report_full.png.tmp before committing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
