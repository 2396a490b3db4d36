"""Read a systemd service unit the way systemd would start it, for hosts where systemd is not PID 1.

``package-test.sh`` uses it to start the installed daemon exactly as the unit's ``ExecStart=``
would: the same user, environment, umask and directories. Subcommands:

- ``get UNIT KEY``: every value of ``KEY`` in ``[Service]``, one per line, specifiers resolved.
- ``env UNIT``: the service environment, NUL-separated ``KEY=VALUE``: systemd's defaults for a
  ``User=`` service, then ``Environment=`` lines, then ``EnvironmentFile=`` files (which
  override ``Environment=``, as systemd.exec(5) says).
- ``dirs UNIT``: ``PATH MODE`` per ``StateDirectory=``/``RuntimeDirectory=``/``LogsDirectory=``/
  ``ConfigurationDirectory=`` entry, the directories systemd creates before ``ExecStart=``.
"""

from __future__ import annotations

import pwd
import shlex
import sys
from pathlib import Path

# Specifiers of a system service (systemd.unit(5) "Specifiers").
_SPECIFIERS = {
    "S": "/var/lib",
    "t": "/run",
    "L": "/var/log",
    "E": "/etc",
    "C": "/var/cache",
    "%": "%",
}
_DIRECTORY_ROOTS = {
    "StateDirectory": "/var/lib",
    "RuntimeDirectory": "/run",
    "LogsDirectory": "/var/log",
    "ConfigurationDirectory": "/etc",
}
# systemd's PATH for services when the unit sets none (merged /usr, systemd 252).
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def resolve_specifiers(text: str) -> str:
    """Replace ``%S``, ``%t``, ``%L``, ``%E``, ``%C`` and ``%%`` as for a system service."""
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "%" and index + 1 < len(text):
            key = text[index + 1]
            if key not in _SPECIFIERS:
                raise SystemExit(f"unit_exec: unsupported specifier '%{key}' in {text!r}")
            out.append(_SPECIFIERS[key])
            index += 2
            continue
        out.append(char)
        index += 1
    return "".join(out)


def service_settings(unit: Path) -> list[tuple[str, str]]:
    """Return ``(key, value)`` pairs of the ``[Service]`` section, in file order."""
    settings: list[tuple[str, str]] = []
    section = ""
    pending = ""
    for raw in unit.read_text(encoding="utf-8").splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if section == "Service" and "=" in line:
            key, value = line.split("=", 1)
            settings.append((key.strip(), value.strip()))
    return settings


def values(unit: Path, key: str) -> list[str]:
    """Return every value of ``key`` with specifiers resolved (an empty value resets the list)."""
    found: list[str] = []
    for name, value in service_settings(unit):
        if name == key:
            found = found + [resolve_specifiers(value)] if value else []
    return found


def _read_environment_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def environment(unit: Path) -> dict[str, str]:
    """Return the environment systemd gives the service's ``ExecStart=`` process."""
    env = {"PATH": _DEFAULT_PATH, "LANG": "C.UTF-8"}
    users = values(unit, "User")
    if users:
        entry = pwd.getpwnam(users[-1])
        env.update(
            USER=entry.pw_name, LOGNAME=entry.pw_name, HOME=entry.pw_dir, SHELL=entry.pw_shell
        )
    for assignment in values(unit, "Environment"):
        for word in shlex.split(assignment):
            key, _, value = word.partition("=")
            env[key] = value
    for spec in values(unit, "EnvironmentFile"):
        optional = spec.startswith("-")
        path = Path(spec.lstrip("-"))
        if not path.is_file():
            if optional:
                continue
            raise SystemExit(f"unit_exec: EnvironmentFile {str(path)!r} does not exist")
        env.update(_read_environment_file(path))
    return env


def directories(unit: Path) -> list[tuple[str, str]]:
    """Return ``(path, mode)`` for each directory systemd creates for the service."""
    result: list[tuple[str, str]] = []
    for kind, root in _DIRECTORY_ROOTS.items():
        modes = values(unit, f"{kind}Mode")
        mode = modes[-1] if modes else "0755"
        for entry in values(unit, kind):
            for name in entry.split():
                result.append((f"{root}/{name}", mode))
    return result


def main(argv: list[str]) -> int:
    """Run one subcommand; return the exit status."""
    if len(argv) < 2 or argv[0] not in ("get", "env", "dirs"):
        print(__doc__, file=sys.stderr)
        return 2
    unit = Path(argv[1])
    if argv[0] == "get":
        if len(argv) != 3:
            print("usage: unit_exec.py get UNIT KEY", file=sys.stderr)
            return 2
        for value in values(unit, argv[2]):
            print(value)
    elif argv[0] == "env":
        sys.stdout.write("".join(f"{key}={value}\0" for key, value in environment(unit).items()))
    else:
        for path, mode in directories(unit):
            print(path, mode)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
