"""The package's version is the collection's: a release that bumps one must bump the other."""

from __future__ import annotations

import winasync_eda

from tests.collection import galaxy, version


def test_package_version_is_galaxy_version() -> None:
    assert winasync_eda.__version__ == version()


def test_galaxy_links_point_at_the_project() -> None:
    meta = galaxy()
    assert meta["repository"] == "https://github.com/winasync/eda"
    assert meta["homepage"] == "https://github.com/winasync/eda"
    assert meta["issues"] == "https://github.com/winasync/eda/issues"
    assert meta["documentation"] == "https://github.com/winasync/eda/blob/main/README.md"
