"""Bench outputs: plain-text / markdown tables, and text files written through the one publisher.

Every table, JSON record and figure a benchmark leaves behind is written to a temp name next to
it and then published over the destination (`medrecon.datasets.publish.write_published`,
``overwrite=True``): a reader, or a run cut short, sees the old file or the new one, never half
of one.  Whether existing results may be replaced at all is decided by each bench up front
(``--overwrite``).
"""
from __future__ import annotations

from pathlib import Path

from medrecon.datasets.publish import write_published

__all__ = ["render_table", "write_text"]


def render_table(head: list[str], body: list[list[str]], markdown: bool = False) -> str:
    """Columns padded to their widest cell: a markdown table, or plain text (first column
    left-aligned, the others right-aligned)."""
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    if markdown:
        lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
                 "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(b, widths)) + " |" for b in body]
    else:
        lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths)))]
        lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(b, widths))) for b in body]
    return "\n".join(lines)


def write_text(path: str | Path, text: str) -> Path:
    """``text`` as the file ``path``, replaced atomically (`write_published`)."""
    return write_published(path, lambda tmp: Path(tmp).write_text(text))
