"""Write the pip bootstrap script ansible-test would otherwise download, so `ansible-test sanity --venv` runs offline.

ansible-test runs ``python get_pip.py [pip options] pip==X ...`` inside a fresh venv; this stand-in bootstraps
pip from the interpreter's own ``ensurepip`` and then installs the requested packages from the package index.
"""

import os
import sys

STAND_IN = """\
import subprocess
import sys

# Flags of get-pip.py that pip install does not know.
GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}
args = [a for a in sys.argv[1:] if a not in GET_PIP_ONLY]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
subprocess.check_call([sys.executable, "-m", "pip", "install"] + args)
"""


def pip_version():
    from ansible_test._internal.python_requirements import get_venv_packages

    class AnyPython:
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"

    return get_venv_packages(AnyPython())["pip"]


def main():
    cache_dir = sys.argv[1]
    path = os.path.join(cache_dir, "get_pip_{}.py".format(pip_version().replace(".", "_")))
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        handle.write(STAND_IN)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
