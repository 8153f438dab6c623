"""The Procfile is the one list of the router's processes: the tests start what it says."""

import re
import shlex
import sys
from pathlib import Path

from .processes import BIN, ROOT

# ${VAR}, ${VAR:-default} and ${VAR:?message} (required), as sh expands them.
VARIABLE = re.compile(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}")


def _expand(match: re.Match, env: dict) -> str:
    name, kind, text = match.groups()
    if name in env:
        return env[name]
    if kind == ":?":
        return match.group(0)  # required and not given: command() refuses to start it
    return text or ""


def commands(path: Path = ROOT / "Procfile", env: dict | None = None) -> dict[str, list[str]]:
    """Each role's command, split, with ${VAR:-default} expanded from `env` (else the default); a required
    ${VAR:?message} not in `env` is left as written."""
    env = env or {}
    roles = {}
    for line in path.read_text().splitlines():
        if ":" not in line or line.startswith("#"):
            continue
        role, command = line.split(":", 1)
        expanded = VARIABLE.sub(lambda m: _expand(m, env), command.strip())
        roles[role.strip()] = shlex.split(expanded)
    return roles


def command(role: str, *extra: str, env: dict | None = None) -> list[str]:
    """The role's Procfile command with this interpreter's tools, plus test-only options."""
    args = commands(env=env)[role]
    missing = [arg for arg in args if "${" in arg]
    if missing:
        raise KeyError(f"{role}: set the variables in {missing}")
    prefix = args[:3] if args[:2] == ["nice", "-n"] else []  # a lower CPU priority, then the program
    program = args[len(prefix) :]
    tool = {"python": sys.executable, "celery": str(BIN / "celery")}.get(program[0], program[0])
    if program[0] == "python":
        program = [program[0], str(ROOT / program[1]), *program[2:]]
    return [*prefix, tool, *program[1:], *extra]
