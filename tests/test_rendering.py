"""runs/rendering.py: markdown for untrusted text, sanitized, and its shortcut for plain text."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from runs.rendering import markdown_to_safe_html, markdown_to_safe_html_parsed


def test_markdown_is_rendered_and_what_could_run_is_not():
    assert markdown_to_safe_html("Some **bold** and `code`") == (
        "<p>Some <strong>bold</strong> and <code>code</code></p>\n"
    )
    assert "<li>one</li>" in markdown_to_safe_html("1. one\n2. two")
    assert markdown_to_safe_html("<script>alert(1)</script>") == (
        "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>\n"
    )
    link = markdown_to_safe_html("[x](javascript:alert(1)) [y](https://example.com)")
    assert link.count("<a ") == 1 and 'href="javascript' not in link  # that one stays text
    assert 'href="https://example.com"' in link and 'rel="noopener noreferrer nofollow"' in link


def test_an_address_written_out_with_its_scheme_is_a_link_and_nothing_else_is():
    assert markdown_to_safe_html("See https://example.com/a?b=1.") == (
        '<p>See <a href="https://example.com/a?b=1" rel="noopener noreferrer nofollow">'
        "https://example.com/a?b=1</a>.</p>\n"
    )
    assert 'href="mailto:ada@example.com"' in markdown_to_safe_html("mailto:ada@example.com")
    for text in ("main.py", "example.com", "www.example.com", "ada@example.com", "ftp://x.org"):
        assert markdown_to_safe_html(f"see {text}") == f"<p>see {text}</p>\n"


@pytest.mark.parametrize(
    "text",
    [
        "hello",
        'a "quoted" word, it\'s (fine): 100% @ $5 = {x}/y ^ z',
        "Grüße, 中文, emoji 😀 and ½",
        "You said: bench (I can see 1 of your messages) @1796235883.198887",
    ],
)
def test_plain_text_is_one_paragraph_as_typed(text):
    assert markdown_to_safe_html(text) == f"<p>{text}</p>\n" == markdown_to_safe_html_parsed(text)


# Characters that mean something to markdown or to HTML, among ordinary ones, so that the
# generated texts are often plain and often not.
_TRICKY = st.sampled_from([*"\\`*_~[]!<>&|#+-=.)(:/ \t\n\r\"'0123456789", "\u00a0", "\u2028"])
_TEXTS = st.one_of(
    st.text(st.one_of(st.characters(codec="utf-8"), _TRICKY), max_size=40),
    st.text(st.one_of(st.sampled_from(list("abc XYZ")), _TRICKY), max_size=40),
    st.text(max_size=40),
)


@hypothesis_settings(max_examples=3000, deadline=None)
@given(_TEXTS)
@example("1. not a paragraph")
@example("- nor this")
@example("# heading")
@example("    indented code")
@example("text  ")
@example("\u3000wide space first")
@example("a\ufffeb")
@example("see https://example.com")
@example("HTTP://EXAMPLE.COM")
@example("mailto:ada@example.com")
def test_the_plain_text_shortcut_renders_exactly_what_the_parser_does(text):
    assert markdown_to_safe_html(text) == markdown_to_safe_html_parsed(text)
