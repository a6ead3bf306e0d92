"""The text of documents: PDF (through pypdf) and DOCX (through python-docx), one row of raw text
each, on their own or inside a folder or an archive.

    python -m finetune data inspect report.pdf
    python -m finetune data inspect handbook.zip      # a zip of .docx and .pdf files

pypdf and python-docx are pure Python (python-docx needs lxml), maintained, and read the text
layer only: a scanned PDF (images of pages) has no text to read and is named as such.
"""

from __future__ import annotations

import io
import zipfile

from finetune.errors import DataError

TYPES = (".pdf", ".docx")
# A .docx is a zip of XML parts: refuse one that would unpack to more than this (a bomb).
MAX_DOCX_BYTES = 256 << 20


class NoText(DataError):
    """The document was read and holds no text (in a folder or archive: skipped like an empty
    file, not an error)."""


def text(data: bytes, name: str) -> str:
    """The document's text; DataError naming the file when it has none or cannot be read."""
    kind = "PDF" if name.lower().endswith(".pdf") else "DOCX"
    try:
        found = _pdf(data, name) if kind == "PDF" else _docx(data, name)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged document must only ever be a DataError
        raise DataError(f"{name}: not a readable {kind} file ({type(e).__name__}: "
                        f"{str(e)[:200]}). Open it and save it again, or export its text.") from None
    found = found.strip()
    if not found:
        why = (" (a scanned PDF holds pictures of pages: run OCR on it first, e.g. with "
               "ocrmypdf)" if kind == "PDF" else "")
        raise NoText(f"{name}: no text found in this {kind} file{why}.")
    return found


def _pdf(data: bytes, name: str) -> str:
    import pypdf

    reader = pypdf.PdfReader(io.BytesIO(data))
    if reader.is_encrypted and not reader.decrypt(""):
        raise DataError(f"{name}: the PDF is protected by a password; save a copy without one.")
    return "\n\n".join(page.extract_text() or "" for page in reader.pages)


def _docx(data: bytes, name: str) -> str:
    import docx
    from docx.table import Table

    with zipfile.ZipFile(io.BytesIO(data)) as parts:
        if sum(i.file_size for i in parts.infolist()) > MAX_DOCX_BYTES:
            raise DataError(f"{name}: the DOCX file would unpack to more than "
                            f"{MAX_DOCX_BYTES >> 20} MiB; it was not read.")
    document = docx.Document(io.BytesIO(data))
    lines = []
    for block in document.iter_inner_content():  # paragraphs and tables in reading order
        if isinstance(block, Table):
            lines += ["\t".join(cell.text for cell in row.cells) for row in block.rows]
        else:
            lines.append(block.text)
    return "\n".join(lines)
