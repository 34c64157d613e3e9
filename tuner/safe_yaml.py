"""Space files read safely: a size cap checked before reading, UTF-8 only, PyYAML's safe loader without
anchors and aliases, and every problem one line that names the file."""

from __future__ import annotations

from pathlib import Path

import yaml

from tuner.errors import UserError

MAX_FILE_BYTES = 1 << 20      # a space file is a page of YAML; anything near this size is not one


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors and aliases: a few hundred bytes of nested aliases expand to
    millions of values (the "billion laughs"), and a space file never needs them."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise yaml.composer.ComposerError(None, None, "anchors and aliases (&name, *name) are not allowed",
                                              event.start_mark)
        return super().compose_node(parent, index)


def parse_yaml(text: str):
    """YAML text as plain data, with the safe loader and no aliases (what yaml.safe_load does, with the
    loader above)."""
    loader = _NoAliasLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _read_text(path: Path) -> str:
    """The file as UTF-8 text, refused before reading when it is larger than any space file."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise UserError(f"{path}: {size:,} bytes is too large for a space file (at most {MAX_FILE_BYTES:,})")
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise UserError(f"{path}: cannot read it: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise UserError(f"{path}: too large for a space file (at most {MAX_FILE_BYTES:,} bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}); save the space file as UTF-8") from None


def read_space_file(path: Path) -> dict:
    """A space file's YAML mapping; every problem is one line that names the file."""
    text = _read_text(path)
    try:
        raw = parse_yaml(text)
    except RecursionError:
        raise UserError(f"{path}: not valid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a space file is a YAML mapping (description:, dataset:, model:, ...)")
    return raw
