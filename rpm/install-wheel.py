"""Unpack a wheel into an RPM buildroot with Fedora's layout (used by macros.compat).

``python3 -m installer`` follows the running interpreter's install scheme (Debian's is
``/usr/local/lib/python3/dist-packages``); an RPM for Fedora needs ``site-packages`` under
``/usr/lib``, so the scheme is given explicitly, as pybuild's pyproject plugin does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from installer import install
from installer.destinations import SchemeDictionaryDestination
from installer.sources import WheelFile


def main() -> int:
    """Install each wheel named on the command line; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, type=Path, help="the buildroot")
    parser.add_argument("--purelib", required=True, help="site-packages path on the target")
    parser.add_argument("--scripts", required=True, help="console scripts directory")
    parser.add_argument("--data", required=True, help="prefix for the wheel's data files")
    parser.add_argument("--interpreter", required=True, help="shebang of the scripts")
    parser.add_argument("wheels", nargs="+", type=Path)
    args = parser.parse_args()

    def under_root(path: str) -> str:
        return str(args.root / path.lstrip("/"))

    destination = SchemeDictionaryDestination(
        {
            "purelib": under_root(args.purelib),
            "platlib": under_root(args.purelib),
            "scripts": under_root(args.scripts),
            "data": under_root(args.data),
            "headers": under_root("/usr/include"),
        },
        interpreter=args.interpreter,
        script_kind="posix",
    )
    for wheel in args.wheels:
        with WheelFile.open(wheel) as source:
            install(
                source=source, destination=destination, additional_metadata={"INSTALLER": b"rpm\n"}
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
