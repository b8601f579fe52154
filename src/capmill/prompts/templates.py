"""Prompt templates as data: `prompts/*.yaml`, each with a name and a version.

A template is filled with `str.format`-style slots. The slots a template may use are declared
by the stage that fills it; a template naming any other slot is a config error at load time,
not a KeyError in the middle of a run.

One template serves several media: its top-level text is written for the media listed in
`kinds` (images by default), and a `media:` block gives the text for another kind under the
same name, e.g. the built-in `ssc` has an image prompt and a `media.video` prompt. `for_kind`
picks the right one; its prompt id names the kind ("ssc@1:video").
"""

from __future__ import annotations

import string
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from capmill.components import Strict
from capmill.errors import ConfigError
from capmill.suggest import did_you_mean

BUILTIN_DIR = Path(__file__).parent


class MediaTemplate(Strict):
    """The text of a template for one more media kind; `options` are merged over the template's."""

    template: str
    system: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class PromptTemplate(Strict):
    name: str
    version: int = Field(1, ge=1)
    # What the template is for and where the method comes from.
    description: str = ""
    source: str = ""
    system: str | None = None
    template: str
    # Extra, kind-specific settings (a caption format's length target, a fusion's guards).
    options: dict[str, Any] = Field(default_factory=dict)
    # Media the top-level template is written for.
    kinds: list[str] = Field(default_factory=lambda: ["image"])
    # The template for other media kinds ("video", "audio"), under the same name.
    media: dict[str, MediaTemplate] = Field(default_factory=dict)
    # Set on the template `for_kind` derives from a `media` block.
    for_media: str | None = None

    @property
    def prompt_id(self) -> str:
        return f"{self.name}@{self.version}" + (f":{self.for_media}" if self.for_media else "")

    def for_kind(self, kind: str) -> PromptTemplate | None:
        """The template for media of `kind`, or None when this one has no text for it."""
        if kind in self.media:
            block = self.media[kind]
            return self.model_copy(update={"template": block.template, "system": block.system,
                                           "options": {**self.options, **block.options}, "media": {},
                                           "kinds": [kind], "for_media": kind})
        if kind in self.kinds:
            return self
        return None

    @property
    def all_kinds(self) -> list[str]:
        return [*self.kinds, *(k for k in self.media if k not in self.kinds)]

    def slots(self) -> set[str]:
        fields = set()
        for text in (self.template, self.system or ""):
            for _, name, _, _ in string.Formatter().parse(text):
                if name is not None:
                    fields.add(name)
        return fields

    def check_slots(self, allowed: set[str]) -> PromptTemplate:
        unknown = self.slots() - allowed
        if unknown:
            raise ConfigError(
                f"template {self.prompt_id} uses unknown slot(s) {', '.join(sorted('{' + u + '}' for u in unknown))}; "
                f"available: {', '.join(sorted('{' + a + '}' for a in allowed)) or 'none'}"
            )
        return self

    def render(self, **values: Any) -> str:
        return self.template.format(**values)

    def render_system(self, **values: Any) -> str | None:
        return self.system.format(**values) if self.system else None


def _parse(path: Path) -> PromptTemplate:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return PromptTemplate.model_validate(data)
    except (yaml.YAMLError, ValidationError) as e:
        raise ConfigError(f"prompt template {path} is invalid: {e}") from None


@cache
def _builtin(kind: str) -> dict[str, PromptTemplate]:
    folder = BUILTIN_DIR / kind
    return {t.name: t for t in (_parse(p) for p in sorted(folder.glob("*.yaml")))} if folder.is_dir() else {}


def load_template(kind: str, name_or_path: str, extra_dirs: list[str] | None = None) -> PromptTemplate:
    """A template by name (user folders first, then built-in `prompts/KIND/`) or by file path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return _parse(path)
    for folder in extra_dirs or []:
        for candidate in (Path(folder) / f"{name_or_path}.yaml", Path(folder) / f"{name_or_path}.yml"):
            if candidate.exists():
                return _parse(candidate)
    builtin = _builtin(kind)
    if name_or_path in builtin:
        return builtin[name_or_path]
    own = [p.stem for folder in extra_dirs or [] for p in Path(folder).glob("*.y*ml")]
    raise ConfigError(
        f"unknown {kind} template {name_or_path!r}; built-in: {', '.join(sorted(builtin)) or 'none'}."
        f"{did_you_mean(name_or_path, [*builtin, *own])} Add your own as a YAML file and name its path or folder."
    )


def builtin_names(kind: str) -> list[str]:
    return sorted(_builtin(kind))
