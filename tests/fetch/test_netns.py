"""A URL manifest with hostile lines, run end to end in a network namespace whose only
interface is loopback (`unshare -n`): even if the address check failed, nothing could leave the
machine. The hostile image server runs inside the namespace; loopback is allowed explicitly."""

import json
import os
import sys

import pytest

from capmill.testing.netns import isolated, unshare_refusal

CHILD = r'''
import json, os, sys
from capmill.testing.netns import ConnectionLog, bring_loopback_up

bring_loopback_up()
from capmill.config import parse_config
from capmill.run import run
from capmill.testing.image_server import ImageServer

tmp = sys.argv[1]
with ImageServer(slow_seconds=2.0) as srv, ConnectionLog() as log:
    lines = {
        "ok": srv.url + "/ok.jpg",
        "private": "http://10.0.0.1/img.jpg",
        "private_172": "http://172.16.0.1:8080/img.jpg",
        "metadata": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "metadata_v6": "http://[fd00:ec2::254]/latest/meta-data/",
        "metadata_number": "http://2852039166/latest/meta-data/",
        "redirect_private": srv.url + "/redirect?to=http://192.168.1.1/admin.jpg",
        "redirect_metadata": srv.url + "/redirect?to=http://169.254.169.254/latest/meta-data/",
        "huge": srv.url + "/huge.jpg",
        "html": srv.url + "/page.html",
        "optout": srv.url + "/noai.jpg",
        "slow": srv.url + "/slow.jpg",
    }
    manifest = os.path.join(tmp, "urls.jsonl")
    with open(manifest, "w") as f:
        for key, url in lines.items():
            f.write(json.dumps({"key": key, "image_path": url, "alt_text": key}) + "\n")
    config = parse_config({
        "input": {"type": "jsonl", "path": manifest,
                  "fetch": {"allow_networks": ["127.0.0.0/8"], "timeout": 0.5, "max_seconds": 1.5,
                            "retries": 0, "max_bytes": 100000}},
        "output": {"path": os.path.join(tmp, "out"), "writers": ["parquet"]},
    })
    summary = run(config, progress=False)
    connections = list(log.addresses)
import pyarrow.parquet as pq
rows = pq.read_table(os.path.join(tmp, "out", "urls_00000.parquet")).to_pylist()
json.dump({"rows": {r["key"]: [r["status"], r["error"]] for r in rows}, "connections": connections,
           "interfaces": sorted(name for _, name in __import__("socket").if_nameindex()), "hits": dict(srv.hits),
           "by_status": summary.by_status}, open(os.path.join(tmp, "result.json"), "w"))
'''


@pytest.mark.slow
def test_hostile_url_manifest_inside_a_loopback_only_namespace(tmp_path):
    reason = unshare_refusal()
    if reason:
        pytest.skip(reason)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = isolated([sys.executable, str(script), str(tmp_path)], timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["interfaces"] == ["lo"]
    rows = result["rows"]
    assert rows["ok"] == ["ok", None]
    expect = {
        "private": "10.0.0.1 is a private address",
        "private_172": "172.16.0.1 is a private address",
        "metadata": "169.254.169.254 is a link-local address",
        "metadata_v6": "fd00:ec2::254 is a private address",
        "metadata_number": "169.254.169.254 is a link-local address",
        "redirect_private": "redirected to http://192.168.1.1/admin.jpg: 192.168.1.1 is a private address",
        "redirect_metadata": "redirected to http://169.254.169.254/latest/meta-data/",
        "huge": "over fetch.max_bytes",
        "html": "content type 'text/html' is not an image, video or audio type",
        "optout": "opted out by X-Robots-Tag: noai",
        "slow": "timed out",
    }
    for key, why in expect.items():
        status, error = rows[key]
        assert status == "read_error" and why in error, (key, error)
    # Only the loopback server was ever connected to; the refused lines opened nothing.
    assert set(result["connections"]) == {"127.0.0.1"}
    assert result["hits"]["/redirect"] == 2
