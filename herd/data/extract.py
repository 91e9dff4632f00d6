"""HTML pages -> their main text, keeping code and math, as the Llama 3 paper describes (section 3.1.1).

Llama 3 builds "a custom parser that extracts the HTML content and optimizes for precision in boilerplate removal
and content recall", processes "HTML pages with mathematics and code content to preserve the structure of that
content", keeps "the image alt attribute text since mathematical content is often represented as pre-rendered
images where the math is also provided in the alt attribute", and emits plain text without markdown markers.

Why not trafilatura: on a page with a `<pre>` block and MathML / MathJax / KaTeX formulas, trafilatura 1.11 (the
version datatrove installs) dropped every formula and flattened the code indentation. This parser, on lxml:
  1. replaces each formula by its TeX source: `<math alttext>` or its `application/x-tex` annotation, MathJax
     `<script type="math/tex">`, KaTeX's annotation; rendered MathJax/KaTeX glyph markup is dropped. Inline formulas
     become `$...$`, display formulas `$$...$$` on their own line. TeX already in the text (`\\(...\\)`) stays as is;
  2. replaces `<img>` by its alt text;
  3. removes non-content elements: scripts, styles, forms' controls, `<nav>`, page-level `<header>`/`<footer>`/
     `<aside>`, hidden elements, elements whose class/id/role names a boilerplate part (menu, cookie, share,
     sidebar, newsletter, ...), unless one holds most of the page's text;
  4. takes `<main>` (or the single `<article>`) when it holds a fair share of the text, else the whole body;
  5. drops link lists (blocks whose text is mostly links) and short blocks made of boilerplate phrases
     ("accept cookies", "all rights reserved", "share this", ...);
  6. writes one line per block with blank lines between paragraphs; `<pre>` (and multi-line `<code>`) text is
     copied verbatim, so indentation and line breaks survive; table cells are separated by tabs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter
from lxml import etree, html

# ---------------------------------------------------------------------------------------------------------------------
# What counts as what

_JUNK_TAGS = ("script", "style", "noscript", "template", "svg", "canvas", "iframe", "object", "embed", "button",
              "input", "select", "textarea", "option", "label", "nav", "menu", "dialog", "head", "link", "meta",
              "map", "audio", "video", "source", "track")  # fmt: skip
# Block elements and the number of newlines they put around their text (2: paragraph break, 1: line break).
_BLOCKS = {
    **dict.fromkeys(("p", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "ul", "ol", "dl", "table",
                     "figure", "hr", "article", "section", "main", "header", "footer", "aside", "form"), 2),
    **dict.fromkeys(("div", "li", "tr", "dt", "dd", "br", "figcaption", "caption", "address", "summary", "details",
                     "fieldset", "legend", "center", "tbody", "thead", "tfoot", "body", "html"), 1),
}  # fmt: skip
_CELLS = ("td", "th")
_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
# Class/id tokens (split on non-alphanumerics) that name a boilerplate part of a page.
_BOILERPLATE_TOKENS = frozenset({
    "nav", "navbar", "navigation", "menu", "menubar", "submenu", "breadcrumb", "breadcrumbs", "footer", "sidebar",
    "widget", "widgets", "cookie", "cookies", "consent", "gdpr", "banner", "share", "sharing", "social",
    "sharedaddy", "addthis", "related", "recommended", "promo", "promoted", "sponsor", "sponsored", "advert",
    "advertisement", "ad", "ads", "adsbygoogle", "newsletter", "subscribe", "subscription", "signup", "login",
    "signin", "popup", "modal", "overlay", "comments", "comment", "disqus", "pagination", "pager", "toolbar",
    "topbar", "masthead", "skip", "skiplink", "tags", "tagcloud", "editsection", "headerlink", "noprint"
})  # fmt: skip
# Longer names matched anywhere in the class/id string (they also appear glued, as in "cookieBanner").
_BOILERPLATE_STEMS = ("cookie", "consent", "newsletter", "breadcrumb", "sidebar", "advert", "social", "share-",
                      "sharing", "navbar", "navigation", "footer", "subscribe", "signup", "popup", "screen-reader",
                      "visually-hidden", "sr-only")  # fmt: skip
_BOILERPLATE_ROLES = frozenset({
    "navigation", "banner", "contentinfo", "complementary", "search", "menu", "menubar", "dialog", "alertdialog",
    "toolbar"
})  # fmt: skip
# Line-number columns of highlighted code (Pygments, Prism, highlight.js, Rouge): never code themselves.
_LINE_NUMBER_STEMS = ("lineno", "gutter", "line-numbers-rows", "ln-numbers", "line-number")
_MATHJAX_RENDER = frozenset({
    "mathjax", "mathjax_preview", "mathjax_display", "mathjax_svg", "mathjax_svg_display", "mathjax_chtml",
    "mjx_assistive_mathml"
})  # fmt: skip
# Short blocks made of these are page furniture, whatever markup carries them.
_BOILERPLATE_PHRASES = re.compile(
    r"\b(?:(?:we|this (?:site|website)) uses? cookies|accept (?:all )?cookies|cookie (?:policy|settings|preferences)"
    r"|all rights reserved|share (?:this|on)\b|follow us|subscribe to (?:our|the) newsletter|sign up for"
    r"|skip to (?:main )?content|back to top|privacy policy|terms of (?:use|service)|log ?in\b.*\bsign ?up"
    r"|copyright\s+(?:\(c\)\s*|©\s*)?\d{4}|©\s*\d{4})",
    re.IGNORECASE,
)
_MAX_BOILERPLATE_WORDS = 30
_WS = re.compile(r"\s+")
_CELL_SEP = "\ue000"  # a private-use character: survives the whitespace collapse, becomes a tab at the end
_HTML_START = re.compile(r"\s*(?:<\?xml[^>]*>\s*)?(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html|head|body)\b", re.I | re.S)
_MATH_TAG = "herd-math"  # the element that stands for one formula, holding its TeX with delimiters
_TEX_HINT = re.compile(r"\\[A-Za-z]+|[_^]\{")  # \frac, \displaystyle, x^{2}, a_{i}
_MATH_IMAGE_CLASSES = frozenset({"math", "tex", "latex", "equation", "formula"})
# Permalink glyphs that documentation generators append to headings ("Title¶").
_PERMALINK_GLYPHS = frozenset({"¶", "#", "§", "🔗", "\uf0c1"})


def is_html(text: str, metadata: Mapping[str, object] | None = None) -> bool:
    """True if metadata says the text is HTML (`format` or `content_type`), or the text starts like an HTML page."""
    for key in ("format", "content_type", "mime_type"):
        value = (metadata or {}).get(key)
        if isinstance(value, str) and value:
            return "html" in value.lower()
    return _HTML_START.match(text[:4096]) is not None


# ---------------------------------------------------------------------------------------------------------------------
# Tree clean-up


def _classes(el: etree._Element) -> str:
    return f"{el.get('class', '')} {el.get('id', '')}".lower()


def _tokens(names: str) -> set[str]:
    return set(re.split(r"[^a-z0-9]+", names)) - {""}


def _attached(el: etree._Element, root: etree._Element) -> bool:
    return el is root or any(a is root for a in el.iterancestors())


def _replace(old: etree._Element, new: etree._Element) -> None:
    parent = old.getparent()
    if parent is not None:
        new.tail = old.tail
        parent.replace(old, new)


def _remove(el: etree._Element) -> None:
    """Remove an element but keep its tail text, which belongs to the parent."""
    parent = el.getparent()
    if parent is None:
        return
    if el.tail:
        prev = el.getprevious()
        if prev is not None:
            prev.tail = (prev.tail or "") + el.tail
        else:
            parent.text = (parent.text or "") + el.tail
    parent.remove(el)


def _math_element(tex: str, display: bool) -> etree._Element:
    el = etree.Element(_MATH_TAG, display="1" if display else "0")
    tex = _WS.sub(" ", tex).strip()
    el.text = f"$${tex}$$" if display else f"${tex}$"
    return el


def _mathml_tex(math: etree._Element) -> str:
    """TeX of a `<math>` element: its alttext, else its TeX annotation, else its MathML text spelled out."""
    if alt := (math.get("alttext") or "").strip():
        return alt
    for ann in math.iter("annotation"):
        if "tex" in (ann.get("encoding") or "").lower() and (ann.text or "").strip():
            return ann.text.strip()
    return " ".join(t.strip() for t in math.itertext() if t.strip())


def _convert_math(root: etree._Element) -> None:
    katex = [el for el in root.xpath("//*[contains(@class, 'katex')]") if "katex" in _tokens(_classes(el))]
    for el in katex:
        if not _attached(el, root):
            continue  # inside a formula already replaced
        tex = next((a.text for a in el.iter("annotation") if "tex" in (a.get("encoding") or "")), None)
        display = any("katex-display" in _classes(a) for a in el.iterancestors())
        if tex:
            _replace(el, _math_element(tex, display))
        else:
            _remove(el)
    scripts = [s for s in root.iter("script") if (s.get("type") or "").lower().startswith("math/tex")]
    for script in scripts:
        _replace(script, _math_element(script.text or "", "mode=display" in script.get("type", "").lower()))
    for container in list(root.iter("mjx-container")):
        inner = next(container.iter("math"), None)
        display = container.get("display") == "true"
        if inner is not None:
            _replace(container, _math_element(_mathml_tex(inner), display))
        else:
            _remove(container)
    maybe_rendered = root.xpath(
        "//*[contains(translate(@class, 'MATHJAX_', 'mathjax_'), 'mathjax') or contains(@class, 'MJX')]"
    )
    rendered = [el for el in maybe_rendered if set(_classes(el).split()) & _MATHJAX_RENDER]
    for el in rendered:
        if not _attached(el, root):
            continue
        inner = next(el.iter("math"), None)
        # With the TeX source in a math/tex script, the rendered copy is a duplicate made of glyphs.
        if inner is not None and not scripts:
            _replace(el, _math_element(_mathml_tex(inner), "display" in _classes(el)))
        else:
            _remove(el)
    for math in list(root.iter("math")):
        if _attached(math, root):
            display = math.get("display") == "block" or math.get("mode") == "display"
            _replace(math, _math_element(_mathml_tex(math), display))


def _is_boilerplate_container(el: etree._Element) -> bool:
    names = _classes(el)
    if (el.get("role") or "").lower() in _BOILERPLATE_ROLES:
        return True
    return bool(_tokens(names) & _BOILERPLATE_TOKENS) or any(stem in names for stem in _BOILERPLATE_STEMS)


def _is_hidden(el: etree._Element) -> bool:
    style = (el.get("style") or "").replace(" ", "").lower()
    return (
        el.get("hidden") is not None
        or el.get("aria-hidden") == "true"
        or "display:none" in style
        or "visibility:hidden" in style
    )


@dataclass(slots=True)
class _Size:
    """What one subtree holds, measured once per pass so no rule re-reads a subtree (deep pages stay linear)."""

    text: int  # non-whitespace characters
    link_text: int  # of which inside <a>
    links: int
    content: bool  # holds <main>, <article> or role=main
    pre: bool  # holds a <pre>


def _nonspace(text: str | None) -> int:
    return len(_WS.sub("", text)) if text else 0


def _is_content(el: etree._Element) -> bool:
    return el.tag in ("main", "article") or el.get("role") == "main"


def _measure(root: etree._Element) -> dict[etree._Element, _Size]:
    sizes: dict[etree._Element, _Size] = {}
    for _, el in etree.iterwalk(root, events=("end",)):  # children end before their parent
        if not isinstance(el.tag, str):
            continue
        size = _Size(_nonspace(el.text), 0, 0, _is_content(el), el.tag == "pre")
        for child in el:
            size.text += _nonspace(child.tail)
            if (c := sizes.get(child)) is not None:
                size.text += c.text
                size.link_text += c.link_text
                size.links += c.links
                size.content |= c.content
                size.pre |= c.pre
        if el.tag == "a":
            size.link_text, size.links = size.text, size.links + 1
        sizes[el] = size
    return sizes


def _remove_boilerplate(body: etree._Element) -> None:
    sizes = _measure(body)
    total = max(1, sizes[body].text)
    doomed: list[etree._Element] = []
    in_content = 0  # open <main>/<article> elements around the current one
    walker = etree.iterwalk(body, events=("start", "end"))
    for event, el in walker:
        if not isinstance(el.tag, str) or el is body:
            continue
        tag = el.tag
        if event == "end":
            in_content -= _is_content(el)
            continue
        in_content += _is_content(el)
        if tag in ("pre", "code", _MATH_TAG) or _is_content(el):
            continue
        names = _classes(el)
        remove = (
            (tag == "a" and el.text_content().strip() in _PERMALINK_GLYPHS)
            or _is_hidden(el)
            or any(stem in names for stem in _LINE_NUMBER_STEMS)
            or (tag in ("header", "footer", "aside") and not in_content)
            # A wrapper that happens to carry such a name ("page has-sidebar") holds most of the page: keep it.
            or (_is_boilerplate_container(el) and not sizes[el].content and sizes[el].text <= total / 2)
        )
        if remove:
            doomed.append(el)
            walker.skip_subtree()
    for el in doomed:
        if _is_hidden(el):
            # MathML kept for screen readers is often the only TeX source (Wikipedia): keep its formulas.
            for math in list(el.iter(_MATH_TAG)):
                math.tail = None  # hidden text after the formula
                el.addprevious(math)
        _remove(el)


def _main_container(body: etree._Element, sizes: dict[etree._Element, _Size]) -> etree._Element:
    total = sizes[body].text
    candidates = [
        el for el in body.iter() if isinstance(el.tag, str) and (el.tag == "main" or el.get("role") == "main")
    ]
    if not candidates:
        articles = list(body.iter("article"))
        candidates = articles if len(articles) == 1 else []  # a list of articles: keep them all (the body)
    if candidates:
        best = max(candidates, key=lambda el: sizes[el].text)
        # A <main> that wraps only a heading while the text sits elsewhere is a bad guess.
        if sizes[best].text >= min(0.25 * total, 500):
            return best
    return body


_LINK_LIST_TAGS = frozenset({"ul", "ol", "dl", "table", "div", "p", "section", "span"})


def _remove_link_lists(container: etree._Element, sizes: dict[etree._Element, _Size]) -> None:
    doomed: list[etree._Element] = []
    walker = etree.iterwalk(container, events=("start",))
    for _, el in walker:
        size = sizes.get(el)
        if el is container or el.tag not in _LINK_LIST_TAGS or size is None or size.pre or size.links < 2:
            continue
        if size.text and size.link_text / size.text >= 0.6:
            # The heading right above a link list is its title ("Related posts"): it goes with it.
            prev = el.getprevious()
            if prev is not None and prev.tag in _HEADINGS and not (prev.tail or "").strip():
                doomed.append(prev)
            doomed.append(el)
            walker.skip_subtree()
    for el in doomed:
        _remove(el)


# ---------------------------------------------------------------------------------------------------------------------
# Tree -> text


@dataclass
class _Block:
    text: str
    kind: str  # "text", "code" or "math"
    gap: int  # newlines before it


@dataclass
class _Builder:
    blocks: list[_Block] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    gap: int = 0

    def inline(self, text: str | None) -> None:
        if text:
            self.pieces.append(text)

    def brk(self, strength: int) -> None:
        self._flush()
        self.gap = max(self.gap, strength)

    def verbatim(self, text: str, kind: str) -> None:
        self._flush()
        if text.strip():
            self.blocks.append(_Block(text, kind, max(self.gap, 1)))
            self.gap = 0

    def _flush(self) -> None:
        text = _WS.sub(" ", "".join(self.pieces)).strip().replace(f" {_CELL_SEP} ", _CELL_SEP)
        self.pieces = []
        text = text.strip(_CELL_SEP + " ").replace(_CELL_SEP, "\t")
        if text:
            self.blocks.append(_Block(text, "text", self.gap))
            self.gap = 0


def _verbatim_text(el: etree._Element) -> str:
    for br in el.iter("br"):
        br.tail = "\n" + (br.tail or "")
    text = "".join(el.itertext()).replace("\r\n", "\n").replace("\xa0", " ")
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines)


def _blocks(container: etree._Element) -> list[_Block]:
    out = _Builder()
    walker = etree.iterwalk(container, events=("start", "end"))
    for event, el in walker:
        tag = el.tag if isinstance(el.tag, str) else ""
        if event == "start":
            if tag == "pre" or (tag == "code" and "\n" in el.text_content().strip()):
                out.brk(2)
                out.verbatim(_verbatim_text(el), "code")
                out.brk(2)
                walker.skip_subtree()
                continue
            if tag == _MATH_TAG:
                if el.get("display") == "1":
                    out.verbatim(el.text or "", "math")
                    out.brk(1)
                else:
                    out.inline(f" {el.text} ")
                walker.skip_subtree()
                continue
            if tag in _BLOCKS:
                out.brk(_BLOCKS[tag])
            elif tag in _CELLS:
                out.inline(f" {_CELL_SEP} ")
            out.inline(el.text)
        else:
            if tag in _BLOCKS:
                out.brk(_BLOCKS[tag])
            if el is not container:
                out.inline(el.tail)
    out.brk(0)
    return out.blocks


def _is_furniture(block: _Block) -> bool:
    if block.kind != "text":
        return False
    if not any(c.isalnum() for c in block.text):
        return True  # separators left between removed links: "|", "»", "..."
    return len(block.text.split()) <= _MAX_BOILERPLATE_WORDS and _BOILERPLATE_PHRASES.search(block.text) is not None


@dataclass(frozen=True)
class Extraction:
    text: str
    title: str | None
    furniture_blocks: int
    """Short blocks dropped for boilerplate phrases (cookie notices, copyright lines, ...)."""


def extract_main_text(page: str, *, keep_image_alt: bool = True) -> Extraction:
    """The main text of an HTML page, with code and math kept (see the module docstring for the rules)."""
    # huge_tree: libxml2 otherwise stops nesting at depth 255 and drops the text of deeper (unclosed) elements.
    parser = html.HTMLParser(encoding="utf-8", remove_comments=True, remove_pis=True, huge_tree=True)
    try:
        root = html.document_fromstring(page.encode("utf-8", "surrogatepass"), parser=parser)
    except (etree.ParserError, ValueError):  # an empty or unparseable page
        return Extraction("", None, 0)
    title_el = root.find(".//title")
    title = _WS.sub(" ", title_el.text_content()).strip() if title_el is not None else ""
    _convert_math(root)
    for img in list(root.iter("img")):
        alt = (img.get("alt") or "").strip() if keep_image_alt and not _is_hidden(img) else ""
        if not alt:
            _remove(img)
        elif _TEX_HINT.search(alt) or _tokens(_classes(img)) & _MATH_IMAGE_CLASSES:
            _replace(img, _math_element(alt, display=False))  # a pre-rendered formula: its alt text is the TeX
        else:
            span = etree.Element("span")
            span.text = f" {alt} "
            _replace(img, span)
    etree.strip_elements(root, *_JUNK_TAGS, with_tail=False)
    body = root.find("body")
    body = body if body is not None else root
    _remove_boilerplate(body)
    sizes = _measure(body)
    container = _main_container(body, sizes)
    _remove_link_lists(container, sizes)
    blocks = _blocks(container)
    kept = [b for b in blocks if not _is_furniture(b)]
    parts: list[str] = []
    for block in kept:
        if parts:
            parts.append("\n" * max(1, block.gap))
        parts.append(block.text)
    return Extraction("".join(parts), title or None, len(blocks) - len(kept))


# ---------------------------------------------------------------------------------------------------------------------
# The pipeline step


class HtmlExtractor(BaseFilter):
    """Replaces an HTML document's text by its main text (code and math kept); drops pages left empty.

    A document is HTML when `metadata["format"]` (or `content_type`) says so, or when its text starts like an HTML
    page (`<!doctype html`, `<html`, ...); other documents pass untouched. Documents of `skip_domains`
    (`metadata["domain"]`, e.g. "code": an HTML template in a code corpus is source, not a page) pass untouched.

    Writes `metadata["extracted_from"] = "html"`, `metadata["title"]` (from `<title>`, unless already set) and sets
    `metadata["format"] = "text"` when a format was given. Drop reasons: "empty_after_extraction" (less than
    `min_chars` characters of main text left), "html_too_large" (more than `max_html_chars` characters).
    """

    name = "html extract"
    type = "🛢 - EXTRAC"

    def __init__(
        self,
        *,
        keep_image_alt: bool = True,
        min_chars: int = 1,
        skip_domains: Iterable[str] = ("code",),
        max_html_chars: int = 10_000_000,
        exclusion_writer: DiskWriter | None = None,
    ) -> None:
        super().__init__(exclusion_writer=exclusion_writer)
        self.keep_image_alt = keep_image_alt
        self.min_chars = min_chars
        self.skip_domains = frozenset(skip_domains)
        self.max_html_chars = max_html_chars

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if doc.metadata.get("domain") in self.skip_domains:
            self.stat_update("skipped_domain")
            return True
        if not is_html(doc.text, doc.metadata):
            self.stat_update("not_html")
            return True
        if len(doc.text) > self.max_html_chars:
            return False, "html_too_large"
        result = extract_main_text(doc.text, keep_image_alt=self.keep_image_alt)
        self.stat_update("furniture_blocks_removed", value=result.furniture_blocks)
        if len(result.text.strip()) < self.min_chars:
            return False, "empty_after_extraction"
        self.stat_update("extracted")
        doc.text = result.text
        doc.metadata["extracted_from"] = "html"
        if result.title:
            doc.metadata.setdefault("title", result.title)
        if "format" in doc.metadata:
            doc.metadata["format"] = "text"
        return True
