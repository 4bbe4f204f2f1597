"""Stand-in for the get-pip script that ansible-test downloads to bootstrap pip in its venvs.

ansible-test (``ansible_test/_util/target/setup/requirements.py``, ``bootstrap``) runs the
script cached at ``~/.ansible/test/cache/get_pip_<version>.py`` as ``__main__`` inside each new
virtual environment, with pip's options and the packages to install as arguments, for example
``--disable-pip-version-check pip==25.2 --no-setuptools --no-wheel``. Downloading it needs a CI
host that is not reachable here; this script does the same with the standard library's
``ensurepip`` (no network), then installs the exact packages asked for with that pip.
"""

from __future__ import annotations

import subprocess
import sys

# get-pip's own options; pip itself does not know them
GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}


def main(argv: list[str]) -> int:
    subprocess.run([sys.executable, "-m", "ensurepip", "--default-pip"], check=True)
    args = [a for a in argv if a not in GET_PIP_ONLY]
    return subprocess.run([sys.executable, "-m", "pip", "install", *args], check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
