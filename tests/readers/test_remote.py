"""Remote shards through fsspec: a real HTTP server on loopback serves the tar files."""

import functools
import http.server
import threading

import pytest

from capmill.config import parse_config
from capmill.run import run
from capmill.testing import write_webdataset


@pytest.fixture
def http_dir(tmp_path):
    write_webdataset(tmp_path / "srv", shards=2, per_shard=5)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "srv"))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_webdataset_over_http_with_brace_range(http_dir, tmp_path):
    pytest.importorskip("aiohttp")  # fsspec's HTTP file system needs it
    config = parse_config({
        "input": {"type": "webdataset", "path": f"{http_dir}/{{00000..00002}}.tar"},
        "output": {"path": str(tmp_path / "out")},
        "stages": [{"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"]}],
    })
    summary = run(config, progress=False)
    assert summary.samples == 10 and summary.by_status == {"ok": 10}
    assert list(summary.failed_shards) == ["00002"]  # the server has no third shard: named, others done
    assert "00002.tar" in summary.failed_shards["00002"]
