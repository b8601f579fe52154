"""The guarded fetcher against a hostile image server on loopback (the only address these tests
connect to; loopback is allowed explicitly, as it is refused by default)."""

import json

import pyarrow.parquet as pq
import pytest

from capmill.config import parse_config
from capmill.errors import FetchFailed, InputRefused
from capmill.fetch import FetchConfig, fetch, opted_out
from capmill.run import run
from capmill.testing.image_server import ImageServer
from capmill.testing.netns import ConnectionLog

LOOPBACK = ["127.0.0.0/8"]


@pytest.fixture
def server():
    with ImageServer(slow_seconds=2.0, flaky_failures=1) as srv:
        yield srv


def quick(**kw):
    return FetchConfig(**{"allow_networks": LOOPBACK, "timeout": 0.5, "max_seconds": 1.5, "retries": 0,
                          "backoff": 0.05, "max_bytes": 200_000, **kw})


def test_an_image_is_fetched_over_the_checked_address(server):
    with ConnectionLog() as log:
        assert fetch(f"{server.url}/ok.jpg", quick()) == server.jpeg
        assert fetch(f"{server.url}/bare.jpg", quick()) == server.jpeg  # no Content-Type: the bytes decide
    assert log.addresses == ["127.0.0.1", "127.0.0.1"]


def test_audio_and_video_urls_are_fetched_like_images(server):
    assert fetch(f"{server.url}/sound.wav", quick()) == server.wav


def test_loopback_is_refused_by_default_before_connecting(server):
    with ConnectionLog() as log, pytest.raises(InputRefused, match="127.0.0.1 is a loopback address"):
        fetch(f"{server.url}/ok.jpg", FetchConfig(retries=0))
    assert log.addresses == [] and server.hits["/ok.jpg"] == 0


@pytest.mark.parametrize(("path", "error", "reason"), [
    ("/huge.jpg", InputRefused, "1000000000 bytes announced, over fetch.max_bytes=200000"),
    ("/endless.jpg", InputRefused, "more than fetch.max_bytes=200000 bytes"),
    ("/page.html", InputRefused, "content type 'text/html' is not an image, video or audio type"),
    ("/liar.jpg", InputRefused, "the body is not an image, video or audio file"),
    ("/noai.jpg", InputRefused, "opted out by X-Robots-Tag: noai"),
    ("/agent.jpg", InputRefused, "opted out by X-Robots-Tag: noimageai"),
    ("/missing.jpg", FetchFailed, "HTTP 404"),
    ("/slow.jpg", FetchFailed, "timed out"),
    pytest.param("/trickle.jpg", FetchFailed, "more than fetch.max_seconds=1.5", marks=pytest.mark.slow),
])
def test_hostile_responses_give_their_reason(server, path, error, reason):
    with pytest.raises(error, match=reason):
        fetch(server.url + path, quick())


def test_opt_outs_for_other_agents_and_an_empty_list_are_not_refusals(server):
    assert fetch(f"{server.url}/other-agent.jpg", quick()) == server.jpeg
    assert fetch(f"{server.url}/noai.jpg", quick(opt_out=[])) == server.jpeg


def test_x_robots_tag_parsing():
    config = FetchConfig()
    assert opted_out(["noindex, nofollow"], config) == "noindex"
    assert opted_out(["googlebot: noai", "nofollow"], config) is None
    assert opted_out(["CapMill: NoImageAI"], config) == "noimageai"
    assert opted_out(["unavailable_after: 25 Jun 2010 15:00:00 PST"], config) is None
    assert opted_out(["noai"], FetchConfig(opt_out=["noimageai"])) is None


@pytest.mark.slow
def test_transient_failures_are_retried_with_backoff_and_final_ones_are_not(server):
    assert fetch(f"{server.url}/flaky.jpg", quick(retries=2)) == server.jpeg
    assert server.hits["/flaky.jpg"] == 2  # one 503, then the image
    with pytest.raises(FetchFailed, match=r"timed out .*\(2 attempts\)"):
        fetch(f"{server.url}/slow.jpg", quick(retries=1))
    assert server.hits["/slow.jpg"] == 2
    with pytest.raises(FetchFailed):
        fetch(f"{server.url}/missing.jpg", quick(retries=3))
    assert server.hits["/missing.jpg"] == 1


def test_every_redirect_is_checked_before_it_is_followed(server):
    assert fetch(f"{server.url}/redirect?to=/ok.jpg", quick()) == server.jpeg
    for target in ("http://10.0.0.1/x.jpg", "http://169.254.169.254/latest/meta-data/", "http://[::1]/x.jpg",
                   "file:///etc/passwd"):
        with ConnectionLog() as log, pytest.raises(InputRefused, match="redirected to"):
            fetch(f"{server.url}/redirect?to={target}", quick())
        assert set(log.addresses) == {"127.0.0.1"}  # the first hop only
    with pytest.raises(InputRefused, match="more than 0 redirects"):
        fetch(f"{server.url}/redirect?to=/ok.jpg", quick(max_redirects=0))


def test_user_agent_is_sent(server):
    seen = []
    handler = server.RequestHandlerClass
    original = handler.do_GET

    def spy(self):  # records the header, then answers as usual
        seen.append(self.headers.get("User-Agent"))
        original(self)

    handler.do_GET = spy
    try:
        fetch(f"{server.url}/ok.jpg", quick(user_agent="my-crawler/1.0 (+mailto:data@example.org)"))
    finally:
        handler.do_GET = original
    assert seen == ["my-crawler/1.0 (+mailto:data@example.org)"]


def test_url_manifest_end_to_end_gives_each_line_its_reason(server, tmp_path):
    lines = {
        "ok": "/ok.jpg", "html": "/page.html", "huge": "/huge.jpg", "noai": "/noai.jpg",
        "redirect_private": "/redirect?to=http://192.168.0.10/x.jpg", "slow": "/slow.jpg", "missing": "/missing.jpg",
    }
    manifest = tmp_path / "m.jsonl"
    with open(manifest, "w") as f:
        for key, path in lines.items():
            f.write(json.dumps({"key": key, "url": server.url + path, "caption": key}) + "\n")
        f.write(json.dumps({"key": "metadata", "url": "http://169.254.169.254/latest/meta-data/", "caption": "x"}) + "\n")
    out = tmp_path / "out"
    config = parse_config({
        "input": {"type": "jsonl", "path": str(manifest), "image_field": "url", "alt_text_field": "caption",
                  "fetch": {"allow_networks": LOOPBACK, "timeout": 0.5, "max_seconds": 1.5, "retries": 0,
                            "max_bytes": 200_000, "concurrency": 4}},
        "output": {"path": str(out), "writers": ["webdataset", "parquet"]},
    })
    with ConnectionLog() as log:
        summary = run(config, progress=False)
    rows = {r["key"]: r for r in pq.read_table(str(out / "m_00000.parquet")).to_pylist()}
    assert rows["ok"]["status"] == "ok"
    expect = {"html": "content type 'text/html'", "huge": "over fetch.max_bytes", "noai": "X-Robots-Tag: noai",
              "redirect_private": "redirected to http://192.168.0.10/x.jpg: 192.168.0.10 is a private address",
              "slow": "timed out", "missing": "HTTP 404", "metadata": "169.254.169.254 is a link-local address"}
    for key, reason in expect.items():
        assert rows[key]["status"] == "read_error" and reason in rows[key]["error"], (key, rows[key]["error"])
    assert summary.by_status == {"ok": 1, "read_error": len(expect)}
    assert set(log.addresses) == {"127.0.0.1"}
    record = json.loads(rows["ok"]["record"])
    assert record["image"]["url"] == server.url + "/ok.jpg" and record["image"]["ext"] == "jpg"


def test_downloads_keep_the_manifest_order_and_stop_with_the_reader(server, tmp_path):
    from capmill.readers import JsonlInput
    from capmill.testing import items, write_jsonl

    write_jsonl(tmp_path / "m.jsonl", items(3))
    with open(tmp_path / "m.jsonl", "a") as f:
        for i in range(9):
            path = "/ok.jpg" if i % 3 else "/page.html"
            f.write(json.dumps({"key": f"url{i}", "image_path": f"{server.url}{path}?n={i}", "alt_text": "x"}) + "\n")
    reader = JsonlInput(path=str(tmp_path / "m.jsonl"), fetch={"allow_networks": LOOPBACK, "concurrency": 3}).build()
    (shard,) = reader.shards()
    samples = list(reader.read(shard))
    assert [s.key for s in samples] == ["000000", "000001", "000002", *(f"url{i}" for i in range(9))]
    assert [s.status for s in samples[3:]] == ["read_error" if i % 3 == 0 else "ok" for i in range(9)]
    assert all(s.image.data == server.jpeg and s.image.ext == "jpg" for s in samples[3:] if s.ok)
    first = next(iter(reader.read(shard)))  # a reader abandoned after one sample
    assert first.key == "000000"


def test_https_goes_to_the_checked_address_and_verifies_the_certificate(server, tmp_path):
    """A self-signed certificate on loopback: the pinned TLS connection is made (SNI, handshake)
    and refused on verification, a final failure that is not retried."""
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    with ImageServer() as tls:
        tls.socket = context.wrap_socket(tls.socket, server_side=True)
        url = tls.url.replace("http://", "https://") + "/ok.jpg"
        with ConnectionLog() as log, pytest.raises(FetchFailed, match="TLS certificate of 127.0.0.1 refused"):
            fetch(url, quick(retries=2))
    assert log.addresses == ["127.0.0.1"]
