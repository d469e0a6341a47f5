"""PDFs for tests and benchmarks: plain ones, and one built to keep its reader busy."""

from __future__ import annotations

import zlib

from fpdf import FPDF
from fpdf.enums import EncryptionMethod


def slow_pdf(pages: int, stream_bytes: int = 1_000_000) -> bytes:
    """A small PDF whose every page draws the same compressed content stream of text
    operators: about a second of pypdf's time per page for a file of a few kilobytes."""
    draw = b"BT /F1 12 Tf 72 712 Td (abc) Tj ET\n"
    stream = zlib.compress(draw * (stream_bytes // len(draw)), 9)
    kids = b" ".join(b"%d 0 R" % (5 + n) for n in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages),
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        *[
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 3 0 R "
            b"/Resources << /Font << /F1 4 0 R >> >> >>"
        ]
        * pages,
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\n" % (len(objects) + 1)
    return out + b"startxref\n%d\n%%%%EOF\n" % xref


def simple_pdf(*pages: str, password: str | None = None) -> bytes:
    document = FPDF()
    document.set_font("Helvetica", size=12)
    for text in pages:
        document.add_page()
        document.multi_cell(0, 8, text)
    if password is not None:
        document.set_encryption("owner", password, EncryptionMethod.RC4)
    return bytes(document.output())
