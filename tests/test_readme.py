"""The README's Python examples run as written: every ```python block of the "Python" and
"Hugging Face datasets" sections, in order, in one namespace, in an empty working folder."""

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks(section: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    found = re.search(rf"^(#+) {re.escape(section)}\n(.*?)(?=^#{{1,3}} )", text, re.S | re.M)
    assert found, f"README has no section {section!r}"
    return re.findall(r"```python\n(.*?)```", found.group(2), re.S)


def test_python_section_runs(tmp_path, monkeypatch, capsys):
    code = blocks("Python")
    assert len(code) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in code:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    printed = capsys.readouterr().out
    assert "True 8 {'ok': 8}" in printed  # the run summary line
    assert namespace["metrics"]["dsc"]["CLIPScore"] is not None
    assert namespace["samples"][0].status == "ok" and os.path.exists(tmp_path / "out" / "_eval.json")
    assert len(namespace["captions"]) == 3 and all(c.ok for c in namespace["captions"])


def test_hugging_face_section_runs(tmp_path, monkeypatch):
    pytest.importorskip("datasets", reason="pip install 'capmill[hf]'")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks("Python"):  # makes out/
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    for block in blocks("Hugging Face datasets"):
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    assert len(namespace["tars"]) == 8 and namespace["row"]["jpg"].size[0] > 0
    assert namespace["rows"][0]["caption.dsc"]
