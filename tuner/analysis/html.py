"""The report as one self-contained HTML file: figures embedded as base64 data URIs, tables inline, so it
opens anywhere (mailed, or as an MLflow artifact) with nothing beside it."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import pandas as pd

NUMBER_CELL = re.compile(r"<td>(-?[0-9][0-9.,]*(?:e[-+]?[0-9]+)?)</td>")   # a cell that holds only a number
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
nav a { margin-right: 1em; } figure { margin: 1em 0; } figcaption { color: #555; font-size: .9em; }
img { max-width: 100%; } p.intro { color: #333; max-width: 60em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
th { background: #f3f3f3; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.caption { color: #555; font-size: .9em; margin-bottom: .2em; }
"""


@dataclass
class Section:
    """One part of the report: a heading, a line on what it shows, then figures, tables and notes."""

    id: str
    title: str
    intro: str = ""
    items: list[tuple[str, object, str]] = field(default_factory=list)   # (kind, content, caption)
    files: list[Path] = field(default_factory=list)                      # what it wrote: figures, CSVs
    facts: dict = field(default_factory=dict)                            # its headline numbers, for summary.json

    def figure(self, path: Path, caption: str = "") -> None:
        self.items.append(("figure", Path(path), caption))
        self.files.append(Path(path))

    def attach(self, path: Path) -> Path:
        """A file of the section that is not shown (a CSV of a table)."""
        self.files.append(Path(path))
        return Path(path)

    def table(self, frame: pd.DataFrame, caption: str = "") -> None:
        self.items.append(("table", frame, caption))

    def note(self, text: str) -> None:
        self.items.append(("note", text, ""))


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _item(kind: str, content, caption: str) -> str:
    if kind == "figure":
        cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
        return f'<figure><img src="{data_uri(content)}" alt="{escape(caption or content.stem)}">{cap}</figure>'
    if kind == "table":
        cap = f'<div class="caption">{escape(caption)}</div>' if caption else ""
        table = content.to_html(index=False, border=0, float_format=lambda v: f"{v:.4f}", na_rep="")
        return cap + NUMBER_CELL.sub(r'<td class="n">\1</td>', table)   # numbers right-aligned, text left
    return f"<p>{escape(content)}</p>"


def _section(s: Section) -> str:
    intro = f'<p class="intro">{escape(s.intro)}</p>' if s.intro else ""
    body = "\n".join(_item(*item) for item in s.items)
    return f'<section id="{s.id}">\n<h2>{escape(s.title)}</h2>\n{intro}\n{body}\n</section>'


def render(title: str, facts: dict[str, str], sections: list[Section]) -> str:
    """The whole page: a title, a table of facts (search, run, model, test accuracy), then the sections."""
    head = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in facts.items())
    nav = " ".join(f'<a href="#{s.id}">{escape(s.title)}</a>' for s in sections)
    body = "\n".join(_section(s) for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body>\n<h1>{escape(title)}</h1>\n"
            f'<table class="facts">{head}</table>\n<nav>{nav}</nav>\n{body}\n</body></html>\n')
