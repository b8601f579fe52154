from capmill.fetch.address import refusal, resolve
from capmill.fetch.client import fetch, is_url, opted_out
from capmill.fetch.config import FetchConfig

__all__ = ["FetchConfig", "fetch", "is_url", "opted_out", "refusal", "resolve"]
