"""Documents into chunks a teacher can write questions about: reading .md/.txt/.html/.pdf and splitting.

A chunk stays on one topic (each heading starts one) and within a token budget, so the teacher sees a whole
section and its questions can be answered from that chunk alone. Chunk ids (`guide.md#3`) are stable while
the documents do not change, which is what lets a rerun skip chunks already done.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from tunesmith.errors import DataError

DOC_SUFFIXES = (".md", ".markdown", ".txt", ".html", ".htm", ".pdf")
CHARS_PER_TOKEN = 4
"""Rough characters per token of English text, to keep chunks within a budget without the teacher's tokenizer."""


class _HtmlText(HTMLParser):
    """Visible text of an HTML page with headings as markdown `#` lines and blocks as paragraphs."""

    BLOCKS = {"p", "div", "li", "tr", "section", "article", "blockquote", "pre", "ul", "ol", "table", "dd", "dt",
              "header", "footer", "main", "aside", "nav", "figure"}
    HIDDEN = {"script", "style", "head", "template", "noscript"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.HIDDEN:
            self.hidden += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self.parts.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")
        elif tag == "br":
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BLOCKS or re.fullmatch(r"h[1-6]", tag):
            self.parts.append("\n\n")

    def handle_data(self, data):
        if not self.hidden:
            self.parts.append(re.sub(r"[ \t\r\n]+", " ", data))


def html_to_text(html: str) -> str:
    """Readable text of an HTML document (scripts and styles dropped, headings kept as `#` lines).

    >>> html_to_text("<h2>Care</h2><p>Wash <b>cold</b>.</p><script>x()</script>")
    '## Care\\n\\nWash cold.'
    """
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    paragraphs = (re.sub(r" *\n *", "\n", p).strip() for p in re.split(r"\n\s*\n", "".join(parser.parts)))
    return "\n\n".join(p for p in paragraphs if p)


def read_document(path: Path) -> str:
    """The text of one .md/.txt/.html/.pdf document.

    Raises:
        DataError: the file cannot be read or decoded, or has an unsupported type.
    """
    suffix = path.suffix.lower()
    try:
        if suffix == ".pdf":
            from pypdf import PdfReader
            from pypdf.errors import PyPdfError

            try:
                return "\n\n".join((page.extract_text() or "").strip() for page in PdfReader(path).pages)
            except (PyPdfError, ValueError, KeyError, TypeError) as e:
                raise DataError(f"cannot read the PDF's text: {e}", file=str(path)) from None
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", file=str(path)) from None
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror}", file=str(path)) from None
    if suffix in (".html", ".htm"):
        return html_to_text(text)
    if suffix in (".md", ".markdown", ".txt"):
        return text.replace("\r\n", "\n")
    raise DataError(f"unsupported document type {suffix!r}; use {', '.join(DOC_SUFFIXES)}", file=str(path))


_HEADING = re.compile(r"^#{1,6}\s+\S")


def _blocks(text: str) -> list[tuple[str, bool]]:
    """Paragraphs and heading lines of a text, each flagged whether it is a heading."""
    blocks, paragraph = [], []
    for line in text.splitlines() + [""]:
        if _HEADING.match(line) or not line.strip():
            if paragraph:
                blocks.append(("\n".join(paragraph).strip(), False))
                paragraph = []
            if line.strip():
                blocks.append((line.strip(), True))
        else:
            paragraph.append(line)
    return blocks


def _pieces(paragraph: str, max_chars: int) -> list[str]:
    """A paragraph cut into pieces that fit: at sentence ends, and inside a sentence only when it must be."""
    if len(paragraph) <= max_chars:
        return [paragraph]
    pieces, current = [], ""
    for sentence in re.split(r"(?<=[.!?])\s+", paragraph):
        for start in range(0, len(sentence), max_chars):
            part = sentence[start:start + max_chars]
            if current and len(current) + 1 + len(part) > max_chars:
                pieces.append(current)
                current = ""
            current = f"{current} {part}" if current else part
    return pieces + [current] if current else pieces


def split_chunks(text: str, max_tokens: int) -> list[str]:
    """Split a document into chunks of at most `max_tokens` (estimated), breaking at headings, then paragraphs.

    Each heading starts a new chunk, so a chunk stays on one topic; a section too long for one chunk is split
    at paragraphs (sentences if need be), and its heading is repeated at the top of each part.

    >>> split_chunks("# Setup\\n\\nPlug it in.\\n\\n# Care\\n\\nWipe it.", 512)
    ['# Setup\\n\\nPlug it in.', '# Care\\n\\nWipe it.']
    """
    max_chars = max_tokens * CHARS_PER_TOKEN
    chunks: list[str] = []
    current: list[str] = []
    has_body = False
    heading = ""
    for block, is_heading in _blocks(text):
        if is_heading:
            if has_body:
                chunks.append("\n\n".join(current))
                current, has_body = [], False
            current.append(block)
            heading = block
            continue
        for piece in _pieces(block, max(max_chars // 2, max_chars - len(heading) - 2)):
            if has_body and sum(len(c) + 2 for c in current) + len(piece) > max_chars:
                chunks.append("\n\n".join(current))
                current = [heading] if heading else []
            current.append(piece)
            has_body = True
    if has_body:
        chunks.append("\n\n".join(current))
    return chunks


@dataclass(frozen=True)
class Chunk:
    """A piece of one document; `id` (`guide.md#3`) is stable while the document does not change."""

    id: str
    source: str
    text: str


def find_documents(docs: str | Path) -> list[Path]:
    """Every document under a folder (or the one file given), sorted so chunk ids are stable.

    Raises:
        DataError: the path does not exist or holds no document.
    """
    docs = Path(docs)
    if docs.is_file():
        return [docs]
    if not docs.is_dir():
        raise DataError("documents folder not found", file=str(docs))
    found = sorted(p for p in docs.rglob("*") if p.is_file() and p.suffix.lower() in DOC_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(docs).parts))
    if not found:
        raise DataError(f"no documents ({', '.join(DOC_SUFFIXES)}) found", file=str(docs))
    return found


def collect_chunks(docs: str | Path, max_tokens: int) -> list[Chunk]:
    """The chunks of every document under `docs`, in a stable order."""
    root = Path(docs)
    chunks = []
    for path in find_documents(root):
        source = path.name if root.is_file() else path.relative_to(root).as_posix()
        for index, text in enumerate(split_chunks(read_document(path), max_tokens), start=1):
            chunks.append(Chunk(f"{source}#{index}", source, text))
    return chunks
