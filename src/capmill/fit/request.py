"""What a stage's fit reads: the input, the columns, whether images are decoded, how many samples."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FitRequest:
    """A stage's declaration of what its `fit` needs; the fit step reads exactly that.

    `scores` and `alt_text` are what a projected read of a capmill output (its parquet columns)
    can give without parsing records or touching images; `image_bytes` asks for the encoded
    bytes (undecoded), `decode` for decoded pixels (implies reading the bytes).
    """

    # The input to fit on; None: the run's own input.
    input: Any = None
    # Score keys the fit reads from the records when present ("clip:alt_text").
    scores: tuple[str, ...] = ()
    alt_text: bool = True
    image_bytes: bool = False
    decode: bool = False
    # The images serve only to compute `scores` where a record lacks them: a capmill output (whose
    # records carry their scores) is then read as a projection, without images.
    images_for_scores: bool = False
    # Samples to read, spread evenly over the shards in shard order; None: the whole input.
    max_samples: int | None = None

    @property
    def needs_images(self) -> bool:
        return self.decode or self.image_bytes

    def projectable(self) -> bool:
        """Whether a capmill output may be read as columns only (key, status, AltText, scores)."""
        return not self.needs_images or self.images_for_scores
