"""Where space files are: the shipped ones by name, a user's by path. Light on purpose (no Ray, no torch), so
that ``tuner.run`` can say a space name is unknown before it imports the libraries a search needs."""

from __future__ import annotations

import re
from pathlib import Path

import search_spaces
from tuner.errors import UserError

SPACES_DIR = Path(search_spaces.__file__).parent
NAME_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


def find_space(name: str) -> Path:
    """A shipped space by name, or a user's file by path. Never walks a path built from a name."""
    if name.endswith((".yaml", ".yml")) or "/" in name or "\\" in name or ".." in name:
        path = Path(name).expanduser()
        if not path.is_file():
            raise UserError(f"space file {name} does not exist; give a file path or one of: {space_names()}")
        return path.resolve()
    path = SPACES_DIR / f"{name}.yaml"
    if not NAME_RE.match(name) or not path.is_file():
        raise UserError(f"unknown space {name!r}; known spaces: {space_names()} (or give a path to a .yaml file)")
    return path


def space_names() -> str:
    return ", ".join(p.stem for p in sorted(SPACES_DIR.glob("*.yaml")))
