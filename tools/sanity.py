"""Run ansible-test sanity on the collection, offline (``make sanity``; ``make test`` runs it).

ansible-test wants the collection at ``.../ansible_collections/winasync/eda`` inside a git work
tree, so the checkout's files (tracked and new ones, not ignored ones) are copied to
``.work/sanity/ansible_collections/winasync/eda`` and a git repository is made there. Its own
virtual environments bootstrap pip with a script it downloads from a CI host that is not
reachable here: ``tools/get_pip_offline.py`` is put where ansible-test caches that script.
HOME is ``.work/sanity-home`` (ansible-test's venvs and cache, kept between runs); pip's cache
stays the user's.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[1]
WORK: Final = ROOT / ".work"
COLLECTION: Final = WORK / "sanity" / "ansible_collections" / "winasync" / "eda"
HOME: Final = WORK / "sanity-home"
BIN: Final = Path(sys.executable).parent

# Tests that cannot run here, each with the reason.
SKIPPED: Final = {
    "pslint": "needs pwsh (PowerShell 7) and PSScriptAnalyzer; no package source reachable here "
    "has them (poll.ps1 is syntax-checked with tree-sitter in tests/unit instead)",
}


def copy_checkout(dest: Path) -> None:
    """The checkout's files as git sees them (HEAD plus uncommitted work), in a fresh repo."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for raw in filter(None, listed):
        name = os.fsdecode(raw)
        source = ROOT / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the work tree, not yet committed
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)


def bootstrap_pip_version() -> str:
    """The pip version ansible-test bootstraps its venvs with (its get_venv_packages)."""
    import ansible_test

    source = Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
    found = re.search(r"\bpip='([0-9.]+)'", source.read_text(encoding="utf-8"))
    if not found:
        raise SystemExit(f"sanity: no pip version found in {source}; update tools/sanity.py")
    return found.group(1)


def install_offline_get_pip(home: Path) -> None:
    """Where ansible-test's requirements.py looks for its cached get-pip script."""
    version = bootstrap_pip_version().replace(".", "_")
    cache = home / ".ansible" / "test" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "tools" / "get_pip_offline.py", cache / f"get_pip_{version}.py")


def ansible_core_version() -> str:
    from ansible.release import __version__

    return ".".join(str(__version__).split(".")[:2])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--python", default=f"{sys.version_info[0]}.{sys.version_info[1]}")
    parser.add_argument("tests", nargs="*", help="only these sanity tests (default: all)")
    args = parser.parse_args()

    ignore = ROOT / "tests" / "sanity" / f"ignore-{ansible_core_version()}.txt"
    if not ignore.is_file():
        raise SystemExit(
            f"sanity: no {ignore.relative_to(ROOT)} for this ansible-core; copy the newest "
            "ignore file to it and check each entry (tests/sanity/README.md)"
        )
    copy_checkout(COLLECTION)
    install_offline_get_pip(HOME)
    env = dict(os.environ)
    env.setdefault("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))
    env.update(HOME=str(HOME), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    command = [str(BIN / "ansible-test"), "sanity", "--local", "--python", args.python]
    command += ["--color", "no", *args.tests]
    for test, reason in SKIPPED.items():
        print(f"sanity: skipping {test}: {reason}", flush=True)
        command += ["--skip-test", test]
    return subprocess.run(command, cwd=COLLECTION, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
