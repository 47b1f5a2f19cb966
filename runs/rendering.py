"""Assistant and user text is untrusted: render it as markdown, then sanitize the HTML."""

from __future__ import annotations

import nh3
from markdown_it import MarkdownIt

# "commonmark" with raw HTML off: any HTML in the text is shown as text, never parsed.
_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False, "breaks": True}).enable(
    ["table", "strikethrough"]
)

_ALLOWED_TAGS = {
    "p", "br", "hr", "em", "strong", "del", "s", "code", "pre", "blockquote",
    "ul", "ol", "li", "a", "h1", "h2", "h3", "h4", "h5", "h6",
    "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
_ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "code": {"class"}, "ol": {"start"}}


def markdown_to_safe_html(text: str) -> str:
    """Sanitized HTML for `text`: no scripts, no event handlers, only http(s) and mailto links."""
    return nh3.clean(
        _markdown.render(text),
        tags=_ALLOWED_TAGS,
        attributes=_ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )
