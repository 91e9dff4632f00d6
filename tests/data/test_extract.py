"""Tests for herd.data.extract on HTML pages generated here, whose main text and boilerplate are known.

Each page is built in one of three markup styles (HTML5 landmarks, class-named divs, bare tables and divs with no
names at all), with a code block and formulas in several encodings. Recall is the fraction of main-text paragraphs
found intact in the output; boilerplate removal is the fraction of boilerplate items absent from it.
"""

from __future__ import annotations

import html
import os
import random
import re

from datatrove.data import Document

from herd.data.extract import HtmlExtractor, extract_main_text, is_html

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SENTENCES = [
    "The river rose quickly after three days of heavy rain in the valley.",
    "Farmers moved their cattle to higher ground before the bridge was closed.",
    "A small library in the town kept records of every flood since 1850.",
    "The committee met on Tuesday to discuss the budget for the new school.",
    "Most of the members agreed that the roof needed repairs before winter.",
    "Bread rises when yeast turns sugar into carbon dioxide and alcohol.",
    "A longer proof gives the dough more flavour and a more open crumb.",
    "The museum opened a new wing devoted to maps drawn by sailors.",
    "Visitors can compare coastlines drawn centuries apart and see how they changed.",
    "Binary search halves the interval at each step, so it needs few comparisons.",
    "The algorithm only works when the input list is already sorted.",
    "Engineers measured the vibration of the tower during the storm.",
    "Their report recommended extra dampers on the upper floors of the building.",
    "Honey bees communicate the direction of food with a waggle dance.",
    "The angle of the dance relative to gravity matches the angle to the sun.",
    "Children in the program read for twenty minutes every evening.",
    "Teachers noticed that their vocabulary grew faster than in previous years.",
    "The old railway line was converted into a path for walkers and cyclists.",
    "Local shops along the route reported more customers on weekends.",
    "Glaciers store about two thirds of the fresh water on the planet.",
    "When they melt, sea levels rise and coastal towns face more floods.",
    "The orchestra rehearsed the symphony for six weeks before the premiere.",
    "Critics praised the slow movement for its patience and its quiet ending.",
    "Volunteers planted four hundred trees along the northern edge of the park.",
    "The trees were chosen because they tolerate dry summers and cold winters.",
]
CONTENT_LINK_SENTENCE = "The full dataset is described in the {a1} and the {a2}, both published last spring."
CODE = (
    "def search(xs, target):\n"
    "    lo, hi = 0, len(xs)\n"
    "    while lo < hi:\n"
    "        mid = (lo + hi) // 2\n"
    "        if xs[mid] < target:\n"
    "            lo = mid + 1\n"
    "        else:\n"
    "            hi = mid\n"
    "    return lo"
)
# Formula TeX, and how each encoding appears in a page.
TEX = [r"\sum_{i=0}^{k} 2^i = 2^{k+1} - 1", r"O(\log n)", r"E = mc^2", r"\frac{a}{b} + \sqrt{x}"]
MATH_ENCODINGS = {
    "mathml": lambda tex: f'<math alttext="{html.escape(tex)}"><mi>x</mi><mo>=</mo><mn>1</mn></math>',
    "mathjax": lambda tex: (f'<span class="MathJax_Preview">x=1</span><span class="MathJax">x=1</span>'
                            f'<script type="math/tex">{html.escape(tex)}</script>'),
    "katex": lambda tex: (f'<span class="katex"><span class="katex-mathml"><math><semantics><mrow><mi>x</mi></mrow>'
                          f'<annotation encoding="application/x-tex">{html.escape(tex)}</annotation></semantics>'
                          f'</math></span><span class="katex-html" aria-hidden="true">x=1</span></span>'),
    "img_alt": lambda tex: f'<img class="latex" src="/f.png" alt="{html.escape(tex)}">',
}  # fmt: skip
MATH_OUTPUT = dict.fromkeys(MATH_ENCODINGS, "${}$")

NAV = ["Home", "Pricing", "Careers", "Contact us", "Press room"]
BOILERPLATE = {
    "cookie": "We use cookies to improve your experience on our site. Accept all cookies",
    "share": "Share this article on Twitter, Facebook or by email",
    "newsletter": "Subscribe to our newsletter for weekly updates from the editors",
    "footer": "Copyright 2024 Example Media Group. All rights reserved.",
    "related_title": "Related stories",
    "related_1": "Ten things you missed this week",
    "related_2": "The best gadgets of the season",
    "skip": "Skip to content",
}


def _paragraphs(rng: random.Random) -> list[str]:
    return [" ".join(rng.sample(SENTENCES, rng.randint(2, 4))) for _ in range(rng.randint(3, 6))]


def _content(rng: random.Random, paragraphs: list[str], formulas: list[tuple[str, str]]) -> str:
    """Main-content markup: paragraphs (one with inline links and a formula), a code block, a content list."""
    parts = [f"<h1>{html.escape(paragraphs[0][:40])}</h1>"]
    for i, p in enumerate(paragraphs):
        parts.append(f"<p>{html.escape(p)}</p>")
        if i == 0:
            a1, a2 = '<a href="/paper">technical report</a>', '<a href="/data">data card</a>'
            parts.append(f"<p>{CONTENT_LINK_SENTENCE.format(a1=a1, a2=a2)}</p>")
        if i == 1:
            parts.append(
                f'<div class="highlight"><pre><code class="language-python">{html.escape(CODE)}</code></pre></div>'
            )
    for encoding, tex in formulas:
        parts.append(f"<p>The identity {MATH_ENCODINGS[encoding](tex)} holds for every k.</p>")
    parts.append("<ul><li>Water the seedlings twice a week.</li><li>Mulch the beds before the first frost.</li></ul>")
    return "\n".join(parts)


def _page(rng: random.Random, style: str, paragraphs: list[str], formulas: list[tuple[str, str]]) -> str:
    nav_links = " | ".join(f'<a href="/{i}">{label}</a>' for i, label in enumerate(NAV))
    related = (f'<h3>{BOILERPLATE["related_title"]}</h3><ul><li><a href="/r1">{BOILERPLATE["related_1"]}</a></li>'
               f'<li><a href="/r2">{BOILERPLATE["related_2"]}</a></li></ul>')  # fmt: skip
    content = _content(rng, paragraphs, formulas)
    b = BOILERPLATE
    if style == "html5":
        body = (
            f'<a class="skip-link" href="#main">{b["skip"]}</a><header><nav>{nav_links}</nav></header>'
            f'<div class="cookie-banner">{b["cookie"]} <button>OK</button></div>'
            f'<main><article>{content}<div class="share-buttons">{b["share"]}</div></article></main>'
            f"<aside>{related}<form><p>{b['newsletter']}</p><input type=email></form></aside>"
            f"<footer><p>{b['footer']}</p></footer>"
        )
    elif style == "divs":
        body = (
            f'<div id="top-menu"><div class="menu-item">{nav_links}</div></div>'
            f'<div id="cookieNotice">{b["cookie"]}</div>'
            f'<div class="wrapper has-sidebar"><div class="content">{content}'
            f'<div class="social">{b["share"]}</div></div><div id="sidebar">{related}</div></div>'
            f'<div class="signup-box">{b["newsletter"]}</div><div id="site-footer">{b["footer"]}</div>'
            f'<span class="sr-only">{b["skip"]}</span>'
        )
    else:  # "bare": no semantic tags and no class names: only link density and boilerplate phrases can tell
        body = (
            f'<div><a href="#c">{b["skip"]}</a></div><table><tr><td>{nav_links}</td></tr></table>'
            f"<div>{b['cookie']}</div><table><tr><td>{content}</td>"
            f"<td>{related}<p>{b['newsletter']}</p></td></tr></table>"
            f"<div>{b['share']}</div><div>{b['footer']}</div>"
        )
    return f"<!DOCTYPE html><html><head><title>Page</title><script>var t = 1;</script></head><body>{body}</body></html>"


def _pages(n: int, seed: int = 0) -> list[tuple[str, str, list[str], list[tuple[str, str]]]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        style = ["html5", "divs", "bare"][i % 3]
        formulas = [(enc, rng.choice(TEX)) for enc in rng.sample(sorted(MATH_ENCODINGS), 2)]
        paragraphs = _paragraphs(rng)
        out.append((style, _page(rng, style, paragraphs, formulas), paragraphs, formulas))
    return out


def _measure(pages):
    found = total = leaked = planted = 0
    for _, page, paragraphs, _ in pages:
        text = extract_main_text(page).text
        lines = set(text.splitlines())
        expected = [*paragraphs, CONTENT_LINK_SENTENCE.format(a1="technical report", a2="data card")]
        found += sum(p in lines for p in expected)
        total += len(expected)
        items = [*BOILERPLATE.values(), *NAV]
        leaked += sum(item in text for item in items)
        planted += len(items)
    return found / total, 1 - leaked / planted


def test_main_text_recall_and_boilerplate_removal_per_markup_style() -> None:
    pages = _pages(60)
    for style in ("html5", "divs", "bare"):
        recall, removed = _measure([p for p in pages if p[0] == style])
        assert recall == 1.0, (style, recall)
        assert removed >= 0.95, (style, removed)


def test_code_block_keeps_its_lines_and_indentation() -> None:
    for _, page, _, _ in _pages(9):
        assert CODE in extract_main_text(page).text


def test_every_math_encoding_survives_as_tex() -> None:
    for encoding, make in MATH_ENCODINGS.items():
        for tex in TEX:
            page = f"<html><body><p>Since {make(tex)} we are done with the proof of the lemma.</p></body></html>"
            text = extract_main_text(page).text
            assert MATH_OUTPUT[encoding].format(tex) in text, (encoding, text)
            assert "x=1" not in text  # the rendered glyph copy is dropped
    display = '<html><body><p>Hence</p><script type="math/tex; mode=display">a^2 + b^2 = c^2</script></body></html>'
    assert "$$a^2 + b^2 = c^2$$" in extract_main_text(display).text.splitlines()


def test_tex_written_in_the_text_is_kept_verbatim() -> None:
    page = r"<html><body><p>The area is \(\pi r^2\) and the volume is $$\frac{4}{3}\pi r^3$$ here.</p></body></html>"
    assert r"\(\pi r^2\)" in extract_main_text(page).text
    assert r"$$\frac{4}{3}\pi r^3$$" in extract_main_text(page).text


def test_tables_lists_and_line_breaks_become_lines() -> None:
    page = (
        "<html><body><main><p>First line<br>second line</p><table><tr><th>name</th><th>size</th></tr>"
        "<tr><td>alpha</td><td>3</td></tr></table><ol><li>one</li><li>two</li></ol></main></body></html>"
    )
    lines = extract_main_text(page).text.splitlines()
    assert {"First line", "second line", "name\tsize", "alpha\t3", "one", "two"} <= set(lines)


def test_highlighted_code_drops_line_number_gutter() -> None:
    page = (
        '<html><body><p>Example code follows below in the table.</p><table class="highlighttable"><tr>'
        '<td class="linenos"><div class="linenodiv"><pre>1\n2</pre></div></td>'
        '<td class="code"><div class="highlight"><pre><span class="k">for</span> x <span class="ow">in</span> y:\n'
        "    print(x)</pre></div></td></tr></table></body></html>"
    )
    text = extract_main_text(page).text
    assert "for x in y:\n    print(x)" in text
    assert "1\n2" not in text


def test_is_html_uses_metadata_then_the_text_start() -> None:
    assert is_html("<!DOCTYPE html><html></html>")
    assert is_html("  <!-- saved --> <html><body>x</body></html>")
    assert is_html("<p>fragment</p>", {"format": "html"})
    assert not is_html("<!DOCTYPE html><html></html>", {"format": "text"})
    assert not is_html("Plain text that mentions <html> later.")


def test_step_extracts_passes_plain_text_and_drops_empty_pages() -> None:
    _, page, paragraphs, _ = _pages(1)[0]
    docs = [
        Document(text=page, id="page", metadata={"url": "https://a.example/x"}),
        Document(text="Plain text stays as it is.", id="plain"),
        Document(text="<html><body><nav><a href='/'>Home</a></nav><script>x()</script></body></html>", id="empty"),
        Document(text="<!DOCTYPE html><html><body><p>a template</p></body></html>", id="code",
                 metadata={"domain": "code"}),
    ]  # fmt: skip
    step = HtmlExtractor()
    out = {d.id: d for d in step.run(iter(docs))}
    assert set(out) == {"page", "plain", "code"}
    assert paragraphs[0] in out["page"].text and not re.search(r"</?[a-z]+[ >]", out["page"].text)
    assert out["page"].metadata["extracted_from"] == "html" and out["page"].metadata["title"] == "Page"
    assert out["plain"].text == "Plain text stays as it is." and out["code"].text.startswith("<!DOCTYPE")
    assert step.stats["dropped_empty_after_extraction"].total == 1


def test_extraction_is_deterministic_and_survives_broken_markup() -> None:
    _, page, _, _ = _pages(1, seed=3)[0]
    assert extract_main_text(page).text == extract_main_text(page).text
    assert extract_main_text("").text == ""
    broken = "<html><body><div><p>Unclosed paragraph with enough words to be kept as text<div><b>bold"
    assert "Unclosed paragraph with enough words to be kept as text" in extract_main_text(broken).text


def test_wikipedia_style_formula_appears_once_and_page_chrome_goes() -> None:
    # The MathML copy is hidden for screen readers and the visible image is aria-hidden: one formula must remain.
    page = (
        '<html><body><main><h2 id="Proofs">Proofs<a class="headerlink" href="#Proofs">¶</a></h2>'
        '<span class="mw-editsection">[<a href="?action=edit">edit</a>]</span>'
        "<p>The sides satisfy the relation shown below for every right triangle that one can draw.</p>"
        '<dl><dd><span class="mwe-math-element"><span class="mwe-math-mathml-inline" style="display: none;">'
        '<math alttext="{\\displaystyle a^{2}+b^{2}=c^{2}}"><mi>a</mi></math></span>'
        '<img class="mwe-math-fallback-image-inline" aria-hidden="true" alt="{\\displaystyle a^{2}+b^{2}=c^{2}}">'
        "</span></dd></dl></main></body></html>"
    )
    text = extract_main_text(page).text
    assert text.count("a^{2}+b^{2}=c^{2}") == 1 and "${\\displaystyle a^{2}+b^{2}=c^{2}}$" in text
    assert "¶" not in text and "edit" not in text and text.startswith("Proofs\n")


def test_plain_image_alt_text_is_kept_as_text() -> None:
    page = '<html><body><p>The chart <img src="c.png" alt="Rainfall per month in 2023"> shows a wet spring.</p></body>'
    assert extract_main_text(page).text == "The chart Rainfall per month in 2023 shows a wet spring."
    assert extract_main_text(page, keep_image_alt=False).text == "The chart shows a wet spring."
