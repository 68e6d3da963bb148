"""MkDocs hook: the docs' ```` ```python fragment ```` fences, rendered as Python.

A page's code blocks are run by tests/test_docs.py, and a block that cannot run as
printed says so in its fence: ```` ```python fragment ````. Markdown's fenced-code syntax
takes one word there, so before a page is rendered the marker becomes a title over the
block (highlighted as Python, labelled "fragment")."""

from __future__ import annotations

import re
from typing import Any

FRAGMENT = re.compile(r"^```python fragment[ \t]*$", re.M)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return FRAGMENT.sub('```python title="fragment"', markdown)
