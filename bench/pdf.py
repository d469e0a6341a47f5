"""What reading PDFs in a child process (memory/pdf.py) costs, and what it saves.

    python bench/pdf.py [--files 20] [--pages 10]

Figures:

- ``pdf_read_ms_inprocess``/``pdf_read_ms_child``: the median time to read one ordinary PDF
  (``--pages`` pages of text, made with fpdf2) in this process on a thread, as before, and
  in a child process (``python -m memory.pdf``, one for all the files, as an ingest has),
  as now; ``pdf_child_over_inprocess`` their ratio; ``pdf_total_ms_*`` and
  ``pdf_total_child_over_inprocess`` the same for all ``--files``, the child's start
  included;
- ``busy_ms_idle``: the median time of a piece of work shaped like a message's handling
  (pure-Python work between 20 calls awaited on a worker thread; the baseline, nothing else
  running), and ``busy_ms_pdf_thread``/
  ``busy_ms_pdf_child`` the same work while a PDF built to be slow (tests/support/pdfs.py)
  is read on a thread / in a child; ``busy_pdf_thread_over_idle`` and
  ``busy_pdf_child_over_idle`` the ratios: what one hostile attachment does to every other
  chat's messages.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memory import pdf
from tests.support.pdfs import simple_pdf, slow_pdf
from tests.support.work import SENTENCE, busy_beside, busy_median


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--pages", type=int, default=10)
    args = parser.parse_args()

    documents = [
        simple_pdf(*[f"Page {n} of manual {m}. " + SENTENCE * 30 for n in range(args.pages)])
        for m in range(args.files)
    ]
    inprocess, child = [], []
    async with pdf.Reader() as reader:  # as an ingest does: one child for the folder
        for data in documents:
            started = time.perf_counter()
            here = await asyncio.to_thread(pdf.extract, data)
            inprocess.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            apart = await reader.read(data)
            child.append((time.perf_counter() - started) * 1000)
            assert here == apart
    read_here, read_apart = statistics.median(inprocess), statistics.median(child)
    # The child's start is in the first file's time: the totals show it.
    total_here, total_apart = sum(inprocess), sum(child)
    print(f"pdf_files={args.files}")
    print(f"pdf_pages_each={args.pages}")
    print(f"pdf_read_ms_inprocess={read_here:.1f}")
    print(f"pdf_read_ms_child={read_apart:.1f}")
    print(f"pdf_child_over_inprocess={read_apart / read_here:.2f}")
    print(f"pdf_total_ms_inprocess={total_here:.0f}")
    print(f"pdf_total_ms_child={total_apart:.0f}")
    print(f"pdf_total_child_over_inprocess={total_apart / total_here:.2f}")

    rounds = 20
    hostile = slow_pdf(pages=8)  # about 10 s of pypdf's time
    idle = await busy_median(rounds)
    thread, on_thread = await busy_beside(asyncio.to_thread(pdf.extract, hostile), rounds)
    await on_thread  # a thread cannot be stopped: waited for before the child's turn
    in_child, in_a_child = await busy_beside(pdf.read(hostile, seconds=60), rounds)
    in_a_child.cancel()  # the child is killed
    await asyncio.gather(in_a_child, return_exceptions=True)
    print(f"busy_ms_idle={idle:.2f}")
    print(f"busy_ms_pdf_thread={thread:.2f}")
    print(f"busy_ms_pdf_child={in_child:.2f}")
    print(f"busy_pdf_thread_over_idle={thread / idle:.2f}")
    print(f"busy_pdf_child_over_idle={in_child / idle:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
