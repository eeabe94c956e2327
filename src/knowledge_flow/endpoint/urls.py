"""Endpoint URLs as given on the command line: one, or several separated by commas (replicas)."""

from __future__ import annotations

from urllib.parse import urlparse


def split_urls(base_url: str) -> list[str]:
    """``"http://a/v1,http://b/v1"`` -> both URLs (stripped, without trailing slashes, duplicates dropped)."""
    urls = [u.strip().rstrip("/") for u in base_url.split(",") if u.strip()]
    return list(dict.fromkeys(urls))


def check_urls(base_url: str) -> list[str]:
    urls = split_urls(base_url)
    if not urls:
        raise ValueError("--base-url is empty")
    for url in urls:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"--base-url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {url!r}")
        try:
            _ = parsed.port
        except ValueError:
            raise ValueError(f"--base-url has an invalid port: {url!r}") from None
    return urls
