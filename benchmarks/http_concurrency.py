"""Throughput of the `openai` backend against a server with a fixed latency, by concurrency.

    python benchmarks/http_concurrency.py [--latency 0.1] [--rounds 10] [--levels 1 8 32 128] [--images]

The server (capmill.testing.fault_server, no faults) answers every chat completion after exactly
`latency` seconds and runs in its own process, so it does not compete with the client for the
interpreter. At concurrency c the ideal throughput is c / latency requests per second; each level
opens its connection pool, then sends c × rounds requests in one `chat` (or `generate`, with --images) call and reports the
measured throughput as a ratio of that ideal. Target: ≥ 0.8 up to concurrency 32.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "capmill.testing.fault_server", "--latency", str(latency)],
                            stdout=subprocess.PIPE, text=True)
    base_url = proc.stdout.readline().strip()
    if not base_url.startswith("http://"):
        proc.kill()
        raise SystemExit(f"fault server did not start (said {base_url!r})")
    return proc, base_url


def measure(base_url: str, concurrency: int, requests: int, images: bool) -> tuple[float, float]:
    """Wall seconds and client CPU seconds to answer `requests` requests at `concurrency`."""
    from capmill.backends.base import ChatRequest, VLMRequest
    from capmill.backends.openai_http import OpenAIBackendConfig
    from capmill.testing.shards import generated

    backend = OpenAIBackendConfig(base_url=base_url, model="fault-model", concurrency=concurrency).build()
    backend.load()
    try:
        if images:
            picture = generated(0, (384, 288))
            batch = [VLMRequest(prompt=f"describe {i}", images=[picture]) for i in range(requests)]
            backend.generate(batch[:concurrency])  # open the whole connection pool first
            start, cpu = time.perf_counter(), time.process_time()
            gens = backend.generate(batch)
        else:
            batch = [ChatRequest(messages=[{"role": "user", "content": f"request {i}"}]) for i in range(requests)]
            backend.chat(batch[:concurrency])
            start, cpu = time.perf_counter(), time.process_time()
            gens = backend.chat(batch)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        backend.close()
    failed = sum(not g.ok for g in gens)
    if failed:
        raise SystemExit(f"{failed} of {requests} requests failed at concurrency {concurrency}")
    return elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=20, help="requests per slot at each level")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--images", action="store_true", help="send a 384x288 JPEG with every request")
    args = parser.parse_args()

    proc, base_url = start_server(args.latency)
    try:
        print(f"server latency {args.latency * 1000:.0f} ms, {args.rounds} rounds per level, "
              f"{'image' if args.images else 'text'} requests, {os.cpu_count()} CPUs")
        print(f"{'concurrency':>11} {'requests':>8} {'seconds':>8} {'req/s':>8} {'ideal':>8} {'ratio':>6} {'client CPU ms/req':>17}")
        for level in args.levels:
            n = level * args.rounds
            seconds, cpu = measure(base_url, level, n, args.images)
            ideal = level / args.latency
            print(f"{level:>11} {n:>8} {seconds:>8.2f} {n / seconds:>8.1f} {ideal:>8.1f} {n / seconds / ideal:>6.2f} "
                  f"{cpu / n * 1000:>17.2f}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
