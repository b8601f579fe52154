"""Settings of the URL fetcher: how a manifest's http(s) image URLs are downloaded."""

from __future__ import annotations

from pydantic import Field, field_validator

from capmill.components import Strict

# X-Robots-Tag directives that opt an image out, the same default as img2dataset.
DEFAULT_OPT_OUT = ["noai", "noimageai", "noindex", "noimageindex"]


class FetchConfig(Strict):
    # Seconds to connect, and seconds without a byte before a download is abandoned.
    timeout: float = Field(10.0, gt=0)
    # Seconds one attempt may take in all, however slowly the server trickles bytes.
    max_seconds: float = Field(30.0, gt=0)
    # Further attempts after a connection error, a timeout, 429 or 5xx; waits `backoff`,
    # then twice that, ... (at most 30 s, or the server's Retry-After when shorter).
    retries: int = Field(2, ge=0, le=10)
    backoff: float = Field(1.0, ge=0)
    # Largest download in bytes; a larger Content-Length is refused before the body is read.
    max_bytes: int = Field(32 * 1024 * 1024, ge=1)
    # Content-Type prefixes accepted; a response without one is accepted and the bytes decide.
    content_types: list[str] = Field(default_factory=lambda: ["image/", "video/", "audio/", "application/octet-stream",
                                                              "binary/octet-stream"])
    user_agent: str = "capmill (+image captioning for training data)"
    # The name X-Robots-Tag directives may address ("capmill: noai"); directives without a name
    # apply to every agent.
    user_agent_token: str = "capmill"
    # X-Robots-Tag directives that refuse the image; [] ignores opt-outs (your responsibility).
    opt_out: list[str] = Field(default_factory=lambda: list(DEFAULT_OPT_OUT))
    max_redirects: int = Field(3, ge=0, le=10)
    # Networks (CIDR) allowed although not public: loopback, link-local, private, ... are
    # refused unless listed here, e.g. ["10.20.0.0/16"] for an image server on your own network.
    allow_networks: list[str] = Field(default_factory=list)
    # Downloads in flight per shard being read.
    concurrency: int = Field(16, ge=1, le=256)

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for net in value:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as e:
                raise ValueError(f"allow_networks: {e}") from None
        return value

    @field_validator("opt_out")
    @classmethod
    def _lower(cls, value: list[str]) -> list[str]:
        return [v.strip().lower() for v in value]
