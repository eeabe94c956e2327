"""The installed package's version, recorded with every run and evaluation."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    try:
        return version("knowledge-flow")
    except PackageNotFoundError:
        return "0+unknown"
