"""`registry.registered` makes test plugins resolvable for one block, without touching entry points."""

from typing import Literal

import pytest

from capmill import keys, registry
from capmill.components import StageConfig
from capmill.config import parse_config
from capmill.errors import ConfigError
from tests.conftest import make_config


class MarkConfig(StageConfig):
    """Test double: a stage that writes scores["mark"]."""

    type: Literal["mark"] = "mark"

    def io(self, available):
        return keys.StageIO(writes=[keys.score("mark")])


class ShadowConfig(StageConfig):
    type: Literal["caption"] = "caption"


def test_a_registered_stage_resolves_inside_the_block_only(tmp_path):
    config = make_config(tmp_path, tmp_path / "o", stages=[{"type": "mark"}])
    with registry.registered(registry.STAGES, MarkConfig):
        assert "mark" in registry.names(registry.STAGES)
        assert isinstance(parse_config(config).stages[0], MarkConfig)
    assert "mark" not in registry.names(registry.STAGES)
    with pytest.raises(ConfigError, match="unknown stage type 'mark'"):
        parse_config(config)


def test_a_registered_type_cannot_shadow_an_installed_one():
    with pytest.raises(ValueError, match="not yet registered"):
        with registry.registered(registry.STAGES, ShadowConfig):
            pass
    assert registry.config_class(registry.STAGES, "caption").__name__ == "CaptionStageConfig"
