"""The Procfile is the one list of the router's processes: the tests start what it says."""

import re
import shlex
import sys
from pathlib import Path

from .processes import BIN, ROOT

DEFAULT = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def commands(path: Path = ROOT / "Procfile", env: dict | None = None) -> dict[str, list[str]]:
    """Each role's command, split, with ${VAR:-default} expanded from `env` (else the default)."""
    env = env or {}
    roles = {}
    for line in path.read_text().splitlines():
        if ":" not in line or line.startswith("#"):
            continue
        role, command = line.split(":", 1)
        expanded = DEFAULT.sub(lambda m: env.get(m.group(1), m.group(2) or ""), command.strip())
        roles[role.strip()] = shlex.split(expanded)
    return roles


def command(role: str, *extra: str, env: dict | None = None) -> list[str]:
    """The role's Procfile command with this interpreter's tools, plus test-only options."""
    args = commands(env=env)[role]
    tool = {"python": sys.executable, "celery": str(BIN / "celery")}.get(args[0], args[0])
    if args[0] == "python":
        args = [args[0], str(ROOT / args[1]), *args[2:]]
    return [tool, *args[1:], *extra]
