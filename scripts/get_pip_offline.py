# helexa.cortex: offline stand-in for ansible-test's get-pip bootstrap (scripts/run_ansible_test.py)
"""ansible-test seeds pip in each virtual environment it makes by running get-pip.py, which it
downloads from ci-files.testing.ansible.com. Where only a package registry is reachable, this
does the same job: pip from the interpreter's own wheel (ensurepip), then that pip installs
what get-pip was asked for (the pinned pip) from the registry pip is configured to use.
"""

from __future__ import annotations

import ensurepip
import os
import subprocess
import sys

GET_PIP_ONLY = ("--no-setuptools", "--no-wheel")  # get-pip.py's own flags, not pip install's


def main() -> int:
    args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
    env = dict(os.environ)  # ensurepip blanks pip's configuration in os.environ
    ensurepip.bootstrap(upgrade=True)
    pip = [sys.executable, "-m", "pip"]
    rc = subprocess.call([*pip, "install", "--no-input", *args], env=env)
    if rc == 0 and "--no-setuptools" in sys.argv:
        rc = subprocess.call([*pip, "uninstall", "-q", "-y", "setuptools"], env=env)
    return rc


if __name__ == "__main__":
    sys.exit(main())
