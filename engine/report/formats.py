"""The report's two written forms: blocks (headings, paragraphs, tables, images) as GitHub
Markdown, and as one self-contained HTML page (inline CSS, images as data: URIs, every string
escaped). render.py builds the blocks."""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

CSS = """body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;
max-width:1280px;margin:2em auto;padding:0 1.2em}h1{font-size:1.7em}h2{margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.8em 0;font-size:.85em}th,td{border:1px solid #d0d0d0;padding:.3em .55em}
th{background:#f2f4f7;text-align:left;vertical-align:bottom}td{text-align:left}td.n{text-align:right;white-space:nowrap}
tr:nth-child(even) td{background:#fafbfc}.scroll{overflow-x:auto}code{background:#f2f2f2;padding:0 .25em;
border-radius:3px;font-size:.92em;white-space:pre-wrap}figure{margin:1.2em 0}img{max-width:100%;height:auto;
border:1px solid #eee}figcaption{color:#555;font-size:.9em}nav ul{columns:3;padding-left:1.2em}"""


class Code(str):
    """Inline text written verbatim: an error message, a tensor name."""



def _frags(x) -> list:
    """Inline content (a string, a Code, or a list of them) as a list."""
    return x if isinstance(x, list) else [x]


def _md_inline(x, cell: bool = False) -> str:
    """Inline content as Markdown: Code in backticks; in a table cell, one line with pipes escaped."""
    out = []
    for s in _frags(x):
        if isinstance(s, Code):
            fence = "`" * (max((len(m) for m in re.findall("`+", s)), default=0) + 1)
            s = f"{fence} {s} {fence}" if s.startswith("`") or s.endswith("`") else f"{fence}{s}{fence}"
        out.append(s)
    text = "".join(out)
    return re.sub(r"\s*\n\s*", " ", text).replace("|", "\\|") if cell else text


def to_markdown(blocks: list) -> str:
    """Blocks as GitHub-flavoured Markdown; images link their relative path."""
    out = []
    for kind, *a in blocks:
        if kind == "h":
            out.append("#" * a[0] + " " + _md_inline(a[1]))
        elif kind == "p":
            out.append(_md_inline(a[0]))
        elif kind == "table":
            lines = [a[0], ["---"] * len(a[0])] + a[1]
            out.append("\n".join("| " + " | ".join(_md_inline(c, cell=True) for c in row) + " |" for row in lines))
        elif kind == "img":
            out.append(f"![{a[1]}]({a[0]})")
    return "\n\n".join(out) + "\n"


def _html_inline(x) -> str:
    """Inline content as escaped HTML, Code in <code>."""
    return "".join(f"<code>{html.escape(s)}</code>" if isinstance(s, Code) else html.escape(str(s)) for s in _frags(x))


def _num_class(cell) -> str:
    """Numbers (and the missing mark) are right-aligned."""
    numeric = isinstance(cell, str) and not isinstance(cell, Code) and re.match(r"[-+]?\d|—$", cell)
    return ' class="n"' if numeric else ""


def _slug(text: str, seen: set) -> str:
    """A heading's anchor id, unique within the page."""
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    slug, n = base, 1
    while slug in seen:
        n += 1
        slug = f"{base}-{n}"
    seen.add(slug)
    return slug


def to_html(blocks: list, root: Path) -> str:
    """Blocks as one self-contained HTML page: inline CSS, plots (read from root) as data: URIs."""
    seen, body, toc = set(), [], []
    for kind, *a in blocks:
        if kind == "h":
            slug = _slug(a[1], seen)
            body.append(f'<h{a[0]} id="{slug}">{_html_inline(a[1])}</h{a[0]}>')
            if a[0] == 2:
                toc.append(f'<li><a href="#{slug}">{_html_inline(a[1])}</a></li>')
        elif kind == "p":
            body.append(f"<p>{_html_inline(a[0])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{_html_inline(h)}</th>" for h in a[0])
            cls = _num_class if len(a[0]) > 2 else (lambda c: "")  # setting/value tables: all left
            rows = "".join("<tr>" + "".join(f"<td{cls(c)}>{_html_inline(c)}</td>" for c in r) + "</tr>" for r in a[1])
            body.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>')
        elif kind == "img":
            data = base64.b64encode((root / a[0]).read_bytes()).decode("ascii")
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(a[1])}">'
                        f"<figcaption>{html.escape(a[1])}</figcaption></figure>")
    title = html.escape(blocks[0][2]) if blocks and blocks[0][0] == "h" else "otl report"
    nav = f'<nav><ul>{"".join(toc)}</ul></nav>' if toc else ""
    body.insert(1, nav)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>\n'
            f"<body>\n" + "\n".join(body) + "\n</body></html>\n")
