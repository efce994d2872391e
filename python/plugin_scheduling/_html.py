"""Small HTML tables for Jupyter's rich display (``_repr_html_``)."""

from __future__ import annotations

import html
from typing import Any, Sequence


def table(caption: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table, every cell escaped; ``None`` shows as ``-``."""

    def cell(tag: str, value: Any) -> str:
        text = "-" if value is None else (f"{value:,.3f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value))
        return f"<{tag}>{html.escape(text)}</{tag}>"

    head = "".join(cell("th", h) for h in header)
    body = "".join("<tr>" + "".join(cell("td", v) for v in row) + "</tr>" for row in rows)
    return f"<table><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
