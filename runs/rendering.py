"""Assistant and user text is untrusted: render it as markdown, then sanitize the HTML."""

from __future__ import annotations

import re
import threading

import nh3
from cachetools import LRUCache, cached
from markdown_it import MarkdownIt

# "commonmark" with raw HTML off: any HTML in the text is shown as text, never parsed.
_markdown = MarkdownIt("commonmark", {"html": False, "linkify": True, "breaks": True}).enable(
    ["table", "strikethrough", "linkify"]
)
# An address becomes a link only when written out with a scheme the sanitizer keeps (http,
# https, mailto): "main.py", "example.com" and "ftp://…" stay text. static/runs/chat.js sets
# the browser's markdown-it alike.
_markdown.linkify.set({"fuzzy_link": False, "fuzzy_email": False, "fuzzy_ip": False})
_markdown.linkify.add("//", None).add("ftp:", None)

_ALLOWED_TAGS = {
    "p", "br", "hr", "em", "strong", "del", "s", "code", "pre", "blockquote",
    "ul", "ol", "li", "a", "h1", "h2", "h3", "h4", "h5", "h6",
    "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
_ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "code": {"class"}, "ol": {"start"}}

# Text that markdown leaves as one plain paragraph and the sanitizer leaves as it is: one line
# with no character that begins markup anywhere in a line (\ ` * _ ~ [ ] ! < > & |), none
# that begins it at the start (# > + - = and digits: headings, quotes, lists, rules), no space
# at either end, none of what HTML writes as an entity or may drop (controls, no-break
# space, line separators, surrogates, non-characters), and no scheme that linkify would make
# a link of. What people type is mostly such text: it skips the parser and the sanitizer, 35 µs
# for a word and 110 µs for a paragraph here.
# tests/test_rendering.py holds it to the full rendering.
_PLAIN = re.compile(
    r"[^\x00-\x1f\x7f-\x9f\\`*_~\[\]!<>&|\u00a0\u2028\u2029\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff]+"
)
_MARKUP_AT_START = frozenset("#>+-=0123456789")
_LINK_SCHEME = re.compile(r"(?:https?|mailto):", re.IGNORECASE)


def markdown_to_safe_html(text: str) -> str:
    """Sanitized HTML for `text`: no scripts, no event handlers, only http(s) and mailto links."""
    if (
        _PLAIN.fullmatch(text)
        and text[0] not in _MARKUP_AT_START
        and not text[0].isspace()
        and not text[-1].isspace()
        and not _LINK_SCHEME.search(text)
    ):
        return f"<p>{text}</p>\n"
    return _markdown_to_safe_html_kept(text)


def markdown_to_safe_html_parsed(text: str) -> str:
    """`markdown_to_safe_html` through the markdown parser and the sanitizer, whatever `text`."""
    return nh3.clean(
        _markdown.render(text),
        tags=_ALLOWED_TAGS,
        attributes=_ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )


# Opening a conversation renders every message in it for the page and again for the socket's
# snapshot, and every tab that opens it renders them once more: the parser and the sanitizer
# were most of that time (python -m bench.transcript). So the HTML of the texts rendered last
# is kept, up to this many characters of it a process (about 10 MB with the texts, measured
# with replies of 40 words); the relay renders each reply as it is saved, so the page of a
# conversation just written is rendered already.
RENDERED_KEPT_CHARS = 4_000_000

_markdown_to_safe_html_kept = cached(
    LRUCache(maxsize=RENDERED_KEPT_CHARS, getsizeof=len), lock=threading.Lock()
)(markdown_to_safe_html_parsed)
