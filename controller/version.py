"""The installed gridcharge version, from the package metadata (``setup.cfg``'s ``version``).

One place for ``gridcharge --version`` and the API's ``params.version``.
"""

from __future__ import annotations

from importlib import metadata


def version() -> str:
    """The version pip installed, or ``0+unknown`` when run from a tree that was never installed."""
    try:
        return metadata.version("gridcharge")
    except metadata.PackageNotFoundError:
        return "0+unknown"
