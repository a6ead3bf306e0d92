"""PDF and DOCX files read as text documents, alone or inside an archive; documents made in the
test (no binary fixtures).

Run: python -m pytest -q tests/test_data_documents.py
"""

from __future__ import annotations

import io
import zipfile

import pytest

from finetune import data
from finetune.errors import DataError


def make_pdf(pages: list[str]) -> bytes:
    """A PDF with one line of Helvetica text a page, drawn with pypdf's own objects."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    font = DictionaryObject({NameObject("/Type"): NameObject("/Font"),
                             NameObject("/Subtype"): NameObject("/Type1"),
                             NameObject("/BaseFont"): NameObject("/Helvetica")})
    for text in pages:
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})})
        if text:
            content = DecodedStreamObject()
            content.set_data(f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode())
            page.replace_contents(content)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def make_docx(paragraphs: list[str], table: list[list[str]] | None = None) -> bytes:
    import docx

    document = docx.Document()
    document.add_paragraph(paragraphs[0])
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, cell in enumerate(row):
                grid.cell(r, c).text = cell
    for paragraph in paragraphs[1:]:
        document.add_paragraph(paragraph)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def test_a_pdf_and_a_docx_are_one_text_row_each(tmp_path):
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(make_pdf(["Quarterly report", "Revenue grew."]))
    assert data.load(str(pdf)).rows == [{"text": "Quarterly report\n\nRevenue grew."}]
    doc = tmp_path / "handbook.docx"
    doc.write_bytes(make_docx(["Welcome.", "Ask HR."], table=[["Day", "Hours"], ["Mon", "9-5"]]))
    loaded = data.load(str(doc))
    assert loaded.format == "text"
    assert loaded.rows == [{"text": "Welcome.\nDay\tHours\nMon\t9-5\nAsk HR."}]


def test_documents_inside_an_archive_are_counted(tmp_path):
    path = tmp_path / "docs.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.pdf", make_pdf(["Alpha"]))
        zf.writestr("b.docx", make_docx(["Beta"]))
        zf.writestr("c.md", "Gamma")
        zf.writestr("scan.pdf", make_pdf([""]))  # pages with no text layer
        zf.writestr("broken.docx", b"PK\x03\x04 not a document")
    loaded = data.load(str(path))
    assert loaded.rows == [{"text": "Alpha"}, {"text": "Beta"}, {"text": "Gamma"}]
    assert loaded.files["read"] == {".docx": 1, ".md": 1, ".pdf": 1}
    reasons = {f["file"]: f["reason"] for f in loaded.files["not_read"]}
    assert reasons["scan.pdf"].startswith("no text found in this PDF file (a scanned PDF")
    assert reasons["broken.docx"].startswith("not a readable DOCX file")
    # A document without text is left out like an empty file; a damaged one is an error.
    assert any(p.message.startswith("docs.zip/scan.pdf: not read: no text found")
               for p in loaded.problems if p.level == "warning")
    assert [p.message.split(":")[0] for p in loaded.errors] == ["docs.zip/broken.docx"]


def test_an_unreadable_document_alone_is_a_clear_error(tmp_path):
    bad = tmp_path / "notes.pdf"
    bad.write_bytes(b"%PDF-1.4 nothing else")
    with pytest.raises(DataError, match="notes.pdf: not a readable PDF file"):
        data.load(str(bad))
