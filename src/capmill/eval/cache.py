"""Image embeddings of a run output, kept per scorer so that evaluating other fields later does
not embed the images again.

    OUT/_eval_cache/images-SCORER.npz    keys, digests (sha1 of the image bytes), emb

SCORER is a digest of the scorer's config and the image decoding settings: another model, or
another preprocessing, is another file. A row is reused only when both the key and the digest
of the image bytes match, so an output rewritten with other images (`--force`) never reuses a
stale embedding. Embeddings are stored in the dtype the scorer returned, so a cached figure is
the very figure a fresh embedding gives. The file is numpy's npz, read without pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

CACHE_DIR = "_eval_cache"


def scorer_identity(scorer_config: Any, image_config: Any) -> str:
    content = {"scorer": scorer_config.model_dump(mode="json"), "image": image_config.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def digest(data: bytes | None) -> str:
    return hashlib.sha1(data).hexdigest() if data is not None else ""


class EmbeddingCache:
    def __init__(self, out_dir: str, identity: str):
        self.path = os.path.join(out_dir, CACHE_DIR, f"images-{identity}.npz")
        self.rows: dict[str, tuple[str, Any]] = {}  # key → (digest, embedding)
        self.hits = 0
        self.misses = 0
        if os.path.exists(self.path):
            import numpy as np

            with np.load(self.path, allow_pickle=False) as f:
                for key, d, emb in zip(f["keys"].tolist(), f["digests"].tolist(), f["emb"], strict=True):
                    self.rows[key] = (d, emb)

    def get(self, key: str, image_digest: str):
        row = self.rows.get(key)
        if row is not None and row[0] == image_digest:
            self.hits += 1
            return row[1]
        self.misses += 1
        return None

    def put(self, key: str, image_digest: str, embedding) -> None:
        self.rows[key] = (image_digest, embedding)

    def save(self) -> None:
        if not self.rows:
            return
        import numpy as np

        keys = sorted(self.rows)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = f"{self.path}.tmp-{os.getpid()}.npz"
        np.savez(tmp, keys=np.array(keys, dtype=str), digests=np.array([self.rows[k][0] for k in keys], dtype=str),
                 emb=np.stack([self.rows[k][1] for k in keys]))
        os.replace(tmp, self.path)
