"""A small self-contained HTML report: sections, tables, quoted text, and images embedded as data URIs
so the file can be mailed or opened anywhere."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from rlaif.records import write_atomic

_STYLE = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.7em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
blockquote{margin:.4em 0;padding:.4em .8em;background:#f8f8f8;border-left:3px solid #bbb;white-space:pre-wrap}
.note{color:#666;font-size:.92em}img{max-width:100%;border:1px solid #eee}
nav a{margin-right:1em}
.banner{padding:.7em 1em;margin:.8em 0;border-radius:4px;border:1px solid}
.banner.alarm{background:#fdecea;border-color:#d93025;color:#8a1c12;font-weight:600}
.banner.warn{background:#fff8e1;border-color:#e0a800}
.banner.ok{background:#e8f5e9;border-color:#43a047}.banner.note{background:#f4f4f4;border-color:#ccc}
"""


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, float) for v in value):
        return "[" + ", ".join(f"{v:.3f}" for v in value) + "]"
    return html.escape(str(value))


class HtmlReport:
    def __init__(self, title: str, subtitle: str = ""):
        self.title, self.subtitle = title, subtitle
        self.sections: list[tuple[str, str, list[str]]] = []
        self.banners: list[str] = []

    def banner(self, text: str, level: str = "note") -> None:
        """A line shown above everything else (level: alarm, warn, ok, note)."""
        self.banners.append(f'<div class="banner {html.escape(level)}" role="status">{html.escape(text)}</div>')

    def section(self, title: str, anchor: str | None = None) -> list[str]:
        parts: list[str] = []
        self.sections.append((title, anchor or title.lower().replace(" ", "-"), parts))
        return parts

    @staticmethod
    def para(text: str, note: bool = False) -> str:
        return f'<p class="{"note" if note else ""}">{html.escape(text)}</p>'

    @staticmethod
    def table(rows: list[dict] | dict, columns: list[str] | None = None) -> str:
        if isinstance(rows, dict):
            rows = [{"metric": k, "value": v} for k, v in rows.items()]
        if not rows:
            return '<p class="note">(nothing to show)</p>'
        columns = columns or list(rows[0])
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
        body = "".join(
            "<tr>" + "".join(
                f'<td class="{"num" if isinstance(r.get(c), (int, float)) else ""}">{fmt(r.get(c, ""))}</td>'
                for c in columns) + "</tr>" for r in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    @staticmethod
    def quote(text: str, label: str = "") -> str:
        label_html = f"<b>{html.escape(label)}</b><br>" if label else ""
        return f"<blockquote>{label_html}{html.escape(text)}</blockquote>"

    @staticmethod
    def image(source) -> str:
        """A matplotlib figure or a PNG path, embedded as base64."""
        if isinstance(source, (str, Path)):
            data = Path(source).read_bytes()
        else:
            buf = io.BytesIO()
            source.savefig(buf, format="png", dpi=110, bbox_inches="tight")
            data = buf.getvalue()
        return f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}">'

    def render(self) -> str:
        nav = "".join(f'<a href="#{a}">{html.escape(t)}</a>' for t, a, _ in self.sections)
        body = "".join(f'<h2 id="{a}">{html.escape(t)}</h2>' + "".join(parts) for t, a, parts in self.sections)
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{_STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>"
                f"<p class='note'>{html.escape(self.subtitle)}</p>{''.join(self.banners)}<nav>{nav}</nav>{body}</body></html>")

    def write(self, path: str | Path) -> Path:
        write_atomic(Path(path), self.render())
        return Path(path)
