"""Documents: HTML and PDF text, chunks that keep to headings and a token budget, stable chunk ids."""

from __future__ import annotations

import pytest

from tunesmith.datagen.documents import CHARS_PER_TOKEN, collect_chunks, read_document, split_chunks
from tunesmith.errors import DataError

from teacher_servers import DOCS


class TestChunking:
    def test_headings_start_chunks_and_long_sections_split_at_paragraphs(self):
        text = ("# Guide\n\n## Setup\n\nPlug it in.\n\n## Care\n\n" + "\n\n".join(["Wipe it with a cloth. " * 5] * 4)
                + "\n\n## Empty section\n")
        chunks = split_chunks(text, 64)  # 256 characters
        assert chunks[0] == "# Guide\n\n## Setup\n\nPlug it in."
        care = chunks[1:]
        # 7 + 2 x 111 characters fit in 256, a third paragraph does not: two parts, each under its heading
        assert len(care) == 2 and all(c.startswith("## Care\n\n") and c.count("Wipe it with a cloth.") == 10
                                      for c in care)
        assert all(len(c) <= 64 * CHARS_PER_TOKEN for c in chunks)
        assert "Empty section" not in "".join(chunks)

    def test_giant_paragraph_is_cut_at_sentences_within_budget(self):
        text = " ".join(f"Sentence number {i} says something." for i in range(100))
        chunks = split_chunks(text, 32)
        assert all(len(c) <= 128 for c in chunks)
        assert " ".join(chunks) == text

    def test_example_documents_of_every_type(self):
        chunks = collect_chunks(DOCS, 512)
        sources = {c.source for c in chunks}
        assert sources == {"kettle_manual.md", "community_garden.txt", "library_faq.html"}
        html = [c.text for c in chunks if c.source == "library_faq.html"]
        assert html[0].startswith("# Northfield Public Library") and "## Borrowing" in html[0]
        assert not any("analytics" in t or "font-family" in t for t in html)
        assert len({c.id for c in chunks}) == len(chunks)

    def test_pdf_text_layer(self, tmp_path):
        (tmp_path / "notes.pdf").write_bytes(_tiny_pdf("Descale the kettle once a month."))
        assert "Descale the kettle once a month." in read_document(tmp_path / "notes.pdf")

    def test_broken_pdf_and_empty_folder_are_clear_errors(self, tmp_path):
        (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
        with pytest.raises(DataError, match="broken.pdf"):
            read_document(tmp_path / "broken.pdf")
        (tmp_path / "empty").mkdir()
        with pytest.raises(DataError, match="no documents"):
            collect_chunks(tmp_path / "empty", 512)


def _tiny_pdf(text: str) -> bytes:
    """A one-page PDF with a text layer, built by hand (pypdf reads but does not write text)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


# ------------------------------------------------------------------------------------------------ seeds, resume
