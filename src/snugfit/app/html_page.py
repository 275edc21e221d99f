"""Pieces of a self-contained HTML page: escaped text, tables, lists, PNG images as
``data:`` URIs, and the page around them with its CSS inline (no script, no network).

Every value is escaped unless it is a `Raw` (HTML already):

>>> table(["file", "label"], [["a<b.jpg", "cat"]], left=2).splitlines()[2]
'<tr><td class="l">a&lt;b.jpg</td><td class="l">cat</td></tr>'
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 1em 2em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.8em; }
h3 { font-size: 1.05em; margin-bottom: 0.3em; }
nav a { margin-right: 0.8em; white-space: nowrap; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: right; vertical-align: middle; }
th { background: #f3f3f3; }
td.l, th.l { text-align: left; }
tr.chosen td { background: #e6f4e6; font-weight: bold; }
.none { color: #777; font-style: italic; }
.status { padding: 0.5em 1em; border-radius: 4px; display: inline-block; }
.ok { background: #e6f4e6; } .bad { background: #fbe4e4; }
img { max-width: 100%; }
img.thumb { width: 96px; height: 96px; object-fit: contain; image-rendering: pixelated; }
code { font-size: 0.92em; word-break: break-all; }
"""


class Raw(str):
    """A table cell that is already HTML."""


def escape(value) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, body: str) -> str:
    """The whole document: ``title`` as its title and heading, then ``body``."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{escape(title)}</h1>\n{body}\n</body>\n</html>\n"
    )


def note(text: str) -> str:
    """A note, greyed: something not there (not computed, no such file), or more elsewhere."""
    return f'<p class="none">{escape(text)}</p>'


def table(head: Sequence, rows: Sequence[Sequence], left: int = 0, marked=frozenset()) -> str:
    """A table; the first ``left`` columns are left-aligned (text), the rest numbers;
    the rows numbered in ``marked`` are highlighted."""

    def cell(tag: str, j: int, v) -> str:
        cls = ' class="l"' if j < left else ""
        return f"<{tag}{cls}>{v if isinstance(v, Raw) else escape(v)}</{tag}>"

    out = ["<table>", "<tr>" + "".join(cell("th", j, h) for j, h in enumerate(head)) + "</tr>"]
    for i, row in enumerate(rows):
        tr = '<tr class="chosen">' if i in marked else "<tr>"
        out.append(tr + "".join(cell("td", j, v) for j, v in enumerate(row)) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def kv_table(rows: Sequence[tuple[str, str]]) -> str:
    """A two-column table of names and values."""
    return table(["", ""], rows, left=2)


def code_list(lines: list[str], limit: int, rest_in: str) -> str:
    """The first ``limit`` lines as a list of ``<code>``; then how many more are in
    the file ``rest_in``."""
    if not lines:
        return ""
    items = [f"<li><code>{escape(line)}</code></li>" for line in lines[:limit]]
    if len(lines) > limit:
        items.append(f"<li>... and {len(lines) - limit} more in {rest_in}</li>")
    return "<ul>" + "".join(items) + "</ul>"


def img(png: bytes, alt: str, name: str, raw: bool = False) -> str:
    """An ``<img>`` of PNG bytes (class "thumb" when ``name`` is "thumb"), in a ``<p>``
    unless ``raw``."""
    cls = ' class="thumb"' if name == "thumb" else ""
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    tag = f'<img{cls} data-name="{escape(name)}" alt="{escape(alt)}" src="{uri}">'
    return tag if raw else f"<p>{tag}</p>"


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def tensor_png(image) -> bytes:
    """A ``(3, H, W)`` float image in [0, 1] as PNG bytes."""
    from PIL import Image

    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(array, "RGB").save(buf, format="PNG")
    return buf.getvalue()
