"""Unpack ansible.windows from the `ansible` wheel on PyPI.

Galaxy cannot be reached from the machines this project runs on, and ansible.windows is not
on PyPI by itself; the community `ansible` package carries it. Only that one folder (about
2 MB) is unpacked, not the whole 50 MB of collections.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PREFIX = "ansible_collections/ansible/windows/"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--package", default="ansible", help="pip requirement of the wheel")
    parser.add_argument("--dest", required=True, help="collections path to unpack into")
    opts = parser.parse_args()
    dest = Path(opts.dest)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
                tmp,
                opts.package,
            ],
            check=True,
        )
        wheels = sorted(Path(tmp).glob("ansible-*.whl"))
        if not wheels:
            print(f"no wheel downloaded for {opts.package}", file=sys.stderr)
            return 1
        count = 0
        with zipfile.ZipFile(wheels[0]) as wheel:
            for member in wheel.infolist():
                if member.filename.startswith(PREFIX) and not member.is_dir():
                    wheel.extract(member, dest)
                    count += 1
    if count == 0:
        print(f"{wheels[0].name} holds no {PREFIX}", file=sys.stderr)
        return 1
    print(f"unpacked {count} files of ansible.windows into {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
