"""A report as a list of blocks, written out as Markdown and as self-contained HTML.

One structure, two renderings, so report.md and report.html cannot say different
things. HTML embeds each PNG as a data URI: the file can be mailed or attached to
a paper review and still shows its plots.
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field

_CSS = (
  "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;"
  "line-height:1.45}table{border-collapse:collapse;font-size:.9rem}"
  "td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}"
  "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
  "img{max-width:100%}code{background:#f3f3f3;padding:0 .2rem}"
)


@dataclass
class Document:
  title: str
  blocks: list[tuple[str, object]] = field(default_factory=list)

  def heading(self, text: str) -> None:
    self.blocks.append(("heading", text))

  def text(self, text: str) -> None:
    """A paragraph; `code` spans in backticks are kept in both renderings."""
    self.blocks.append(("text", text))

  def bullets(self, items: list[str]) -> None:
    self.blocks.append(("bullets", items))

  def table(self, header: list[str], rows: list[list[str]]) -> None:
    self.blocks.append(("table", (header, rows)))

  def figure(self, png_name: str, caption: str) -> None:
    """A PNG in the report's directory, referenced by name."""
    self.blocks.append(("figure", (png_name, caption)))

  def markdown(self) -> str:
    out = [f"# {self.title}", ""]
    for kind, body in self.blocks:
      if kind == "heading":
        out += [f"## {body}", ""]
      elif kind == "text":
        out += [body, ""]
      elif kind == "bullets":
        out += [f"- {item}" for item in body] + [""]
      elif kind == "table":
        header, rows = body
        out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(row) + " |" for row in rows] + [""]
      elif kind == "figure":
        name, caption = body
        out += [f"![{caption}]({name})", "", f"*{caption}*", ""]
    return "\n".join(out)

  def html(self, image_dir: str) -> str:
    """Self-contained HTML: every figure is read from `image_dir` and inlined."""
    out = [
      "<!doctype html><html><head><meta charset='utf-8'>",
      f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>",
      f"<h1>{html.escape(self.title)}</h1>",
    ]
    for kind, body in self.blocks:
      if kind == "heading":
        out.append(f"<h2>{html.escape(body)}</h2>")
      elif kind == "text":
        out.append(f"<p>{_inline(body)}</p>")
      elif kind == "bullets":
        out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in body) + "</ul>")
      elif kind == "table":
        header, rows = body
        out.append("<table><tr>" + "".join(f"<th>{_inline(h)}</th>" for h in header) + "</tr>")
        out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in rows]
        out.append("</table>")
      elif kind == "figure":
        name, caption = body
        with open(os.path.join(image_dir, name), "rb") as f:
          data = base64.b64encode(f.read()).decode("ascii")
        out.append(
          f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
          f"<figcaption>{_inline(caption)}</figcaption></figure>"
        )
    out.append("</body></html>")
    return "\n".join(out)


def _inline(text: str) -> str:
  """Escape, then turn `code` spans into <code>: the one Markdown feature the report uses inline."""
  parts = html.escape(text).split("`")
  return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
