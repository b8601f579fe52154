"""The models one `capmill eval` loads: each built and loaded on first use, shared by every metric
and every path of the evaluation (`--compare A B` of two runs loads each model once), and closed
at the end. A model that cannot be loaded raises `SetupError` for each metric that asks for it;
the runner turns that into a note naming the metric and the model, as SPICE is skipped."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from capmill.errors import ConfigError, SetupError

if TYPE_CHECKING:
    from capmill.eval.config import EvalConfig

# The protocol each role must implement, by name in capmill.backends.base.
PROTOCOLS = {
    "parser": "SceneGraphParser",
    "analyzer": "TextAnalyzer",
    "embedder": "TextEmbedder",
    "judge": "LanguageModel",
    "arena_judge": "VisionLanguageModel",
    "verifier": "AskingVisionLanguageModel",
    "nli": "EntailmentModel",
    "t2i": "TextToImage",
}
# Which config field configures a role.
_FIELD = {"arena_judge": "judge"}


class EvalModels:
    def __init__(self, config: EvalConfig):
        self.config = config
        self._live: dict[str, Any] = {}  # config field → loaded backend
        self._failed: dict[str, SetupError] = {}
        self._graphs: Any = None
        self._wordnet: Any = None
        self._vectors: Any = None

    def get(self, role: str) -> Any:
        """The loaded backend of `role` (see PROTOCOLS); SetupError when it has none or cannot load."""
        from capmill.backends import base

        name = _FIELD.get(role, role)
        spec = self.config.backend(name)
        if spec is None:
            raise SetupError(f"no {name} is configured")
        if name in self._failed:
            raise self._failed[name]
        if name not in self._live:
            try:
                backend = spec.build()
                backend.load()
            except SetupError as e:
                self._failed[name] = SetupError(f"{spec.model_ids()[0]} could not be loaded: {e}")
                raise self._failed[name] from e
            self._live[name] = backend
        backend = self._live[name]
        protocol = getattr(base, PROTOCOLS[role])
        try:
            return base.require(backend, protocol, f"the {role.replace('_', ' ')}")
        except ConfigError as e:
            raise SetupError(str(e)) from None

    def model_id(self, role: str) -> str:
        spec = self.config.backend(_FIELD.get(role, role))
        return spec.model_ids()[0] if spec is not None else "none"

    def scene_graphs(self):
        from capmill.eval.graphs import SceneGraphs

        if self._graphs is None:
            self._graphs = SceneGraphs(self.get("parser"), analyzer=lambda: self.get("analyzer"),
                                       batch_size=max(256, self.config.batch_size))
        return self._graphs

    def wordnet(self):
        from capmill.eval.wordnet import WordNet

        if self._wordnet is None:
            self._wordnet = WordNet()
        return self._wordnet

    def phrase_vectors(self):
        from capmill.eval.graphs import PhraseVectors

        if self._vectors is None:
            self._vectors = PhraseVectors(self.get("embedder"), batch_size=max(256, self.config.batch_size))
        return self._vectors

    def close(self) -> None:
        for backend in self._live.values():
            backend.close()
        self._live.clear()
