"""The large retrieval benchmark's corpus: Debian's Linux man pages, Russian and English.

    python bench/mancorpus.py [--out DIR]        # build (apt-get download, dpkg -x, groff)
    python bench/mancorpus.py --check            # every question's evidence is in its page
    python bench/mancorpus.py --pdf [--out DIR]  # the same pages as printed PDF manuals
    python bench/mancorpus.py --make-manifest    # choose the pages again (rarely)

Why man pages: they are real public documents, hundreds of them are "the same kind of
document" (a system call, a library function, a device), and manpages-l10n translated many
of them into Russian. Each page goes into the corpus in one language only, so that every
question has exactly one right document; ``bench/data/manpages.json`` (the manifest) says
which. Pages whose Russian translation is mostly done (at least half of the letters of the
rendered page Cyrillic) are split about half and half by a hash of their name; the rest of
the corpus is English.

The manifest, not the packages, fixes the corpus: a question names its document as
``man2/open.2.txt``. Packages come from the machine's Debian release (``apt-get download``,
no root needed for the download itself, only network access to the Debian mirror); a release
with other versions than the manifest's is used all the same, with a warning, and pages it
lacks are listed.

Pages are rendered by groff (``groff-base``, installed on Debian with man-db) to plain UTF-8
text, without hyphenation, at a wide line length, as ``man`` would show them.

``--pdf`` makes the same pages into PDF files as a printed manual looks: 80 columns,
hyphenated, 66 lines a page with the running header ("open(2)  System Calls Manual
open(2)") and footer (release, date, page number) on every page, one PDF page per printed
page, in DejaVu Sans Mono (Debian's ``fonts-dejavu-core``) with fpdf2. Text extracted from
them has what real PDFs have: no blank lines between paragraphs, words broken at line ends,
the same lines on every page. Questions name ``man2/open.2.pdf`` then (``pdf_questions``).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "bench" / "data" / "manpages.json"
QUESTIONS = ROOT / "bench" / "data" / "manpages_questions.json"
DEFAULT_OUT = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "beseda" / "mancorpus"
)
DEFAULT_PDF_OUT = DEFAULT_OUT.with_name("mancorpus-pdf")
PACKAGES = {
    "en": ["manpages", "manpages-dev"],
    "ru": ["manpages-ru", "manpages-ru-dev"],
}
# A Russian page counts as translated from this share of Cyrillic letters up (code, names
# and untranslated paragraphs are Latin: fully translated pages reach about 0.7-0.9).
TRANSLATED = 0.5
GROFF = ["groff", "-k", "-t", "-man", "-Tutf8", "-P-cbou", "-rLL=160n", "-rHY=0"]
# Printed: paginated (no continuous rendering), hyphenated, 80 columns; 66 lines a page.
PRINTED = ["groff", "-k", "-t", "-man", "-Tutf8", "-P-cbou", "-rcR=0", "-rLL=80n"]
PAGE_LINES = 66
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf")
_CYRILLIC = re.compile(r"[а-яА-ЯёЁ]")
_LATIN = re.compile(r"[a-zA-Z]")


def download(packages: list[str], into: Path) -> dict[str, str]:
    """``apt-get download`` each package and unpack it under ``into``; package -> version."""
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", *packages], cwd=into, check=True)  # noqa: S607
    versions = {}
    for deb in sorted(into.glob("*.deb")):
        name, version, _ = deb.name.split("_", 2)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(into / "root")], check=True)  # noqa: S607
        versions[name] = version.replace("%3a", ":")
    return versions


def pages(root: Path, lang: str) -> dict[str, Path]:
    """Real pages (no symlinks, no ``.so`` redirects) by ``manN/name.N``."""
    base = root / "usr" / "share" / "man" / ("ru" if lang == "ru" else "")
    found = {}
    for path in sorted(base.glob("man*/*.gz")):
        if path.is_symlink():
            continue
        text = gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
        body = [line for line in text.splitlines() if line and not line.startswith('.\\"')]
        if body and body[0].startswith(".so "):
            continue
        found[f"{path.parent.name}/{path.name.removesuffix('.gz')}"] = path
    return found


def render(path: Path, command: Sequence[str] = GROFF) -> str:
    source = gzip.decompress(path.read_bytes())
    done = subprocess.run(command, input=source, capture_output=True, check=True)
    return done.stdout.decode("utf-8", "replace")


def write_printed(path: Path, target: Path) -> None:
    """The page as a printed manual, in PDF (see the module doc)."""
    from fpdf import FPDF  # noqa: PLC0415 - a dev dependency, only for --pdf

    logging.getLogger("fpdf").setLevel(logging.ERROR)  # glyphs DejaVu lacks (Thai, Hebrew)
    lines = render(path, PRINTED).split("\n")
    pdf = FPDF(format="A4")
    pdf.add_font("mono", "", str(FONT))
    pdf.set_font("mono", size=8)
    pdf.set_auto_page_break(auto=False)
    for start in range(0, len(lines), PAGE_LINES):
        page = lines[start : start + PAGE_LINES]
        if not any(line.strip() for line in page):
            continue
        pdf.add_page()
        for n, line in enumerate(page):
            if line.strip():
                pdf.text(12, 12 + n * 4.1, line)
    pdf.output(str(target))


def cyrillic_share(text: str) -> float:
    cyrillic = len(_CYRILLIC.findall(text))
    return cyrillic / (cyrillic + len(_LATIN.findall(text)) or 1)


def make_manifest(work: Path) -> dict[str, object]:
    versions = {lang: download(names, work / lang) for lang, names in PACKAGES.items()}
    english = pages(work / "en" / "root", "en")
    russian = pages(work / "ru" / "root", "ru")
    chosen: dict[str, str] = {}
    for page, path in russian.items():
        if page not in english or cyrillic_share(render(path)) < TRANSLATED:
            continue
        digest = hashlib.sha256(page.encode()).digest()
        chosen[page] = "ru" if digest[0] % 2 else "en"
    return {
        "about": "Pages of the large retrieval benchmark and the language each is taken in "
        "(bench/mancorpus.py).",
        "packages": {name: v for lang in versions.values() for name, v in lang.items()},
        "pages": dict(sorted(chosen.items())),
    }


def build(out: Path, manifest: dict[str, object], work: Path, *, pdf: bool = False) -> int:
    wanted = manifest["pages"]
    assert isinstance(wanted, dict)
    expected = manifest["packages"]
    assert isinstance(expected, dict)
    found: dict[str, dict[str, Path]] = {}
    for lang, names in PACKAGES.items():
        versions = download(names, work / lang)
        for name, version in versions.items():
            if expected.get(name) != version:
                print(
                    f"warning: {name} {version} here, the manifest was made with "
                    f"{expected.get(name)}: the pages may differ a little",
                    file=sys.stderr,
                )
        found[lang] = pages(work / lang / "root", lang)
    if out.exists():
        shutil.rmtree(out)
    missing = []
    for page, lang in wanted.items():
        path = found[lang].get(page)
        if path is None:
            missing.append(f"{lang}:{page}")
            continue
        target = out / f"{page}.{'pdf' if pdf else 'txt'}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if pdf:
            write_printed(path, target)
        else:
            target.write_text(render(path), encoding="utf-8")
    if missing:
        print(f"warning: {len(missing)} pages not in these packages: {missing}", file=sys.stderr)
    (out / ".complete").write_text(json.dumps(manifest["packages"]), encoding="utf-8")
    return len(wanted) - len(missing)


def ensure(out: Path | None = None, *, pdf: bool = False) -> Path:
    """The corpus folder (the PDF one with ``pdf``), built first if it is not there yet."""
    out = out or (DEFAULT_PDF_OUT if pdf else DEFAULT_OUT)
    if pdf and not FONT.exists():
        raise SystemExit(f"{FONT} is needed for the PDF manuals (Debian's fonts-dejavu-core)")
    if not (out / ".complete").exists():
        manifest = json.loads(MANIFEST.read_text(encoding="utf-8"))
        with tempfile.TemporaryDirectory() as work:
            count = build(out, manifest, Path(work), pdf=pdf)
        print(f"# built {count} man pages into {out}", file=sys.stderr)
    return out


def pdf_questions(into: Path) -> Path:
    """The questions file with each source the PDF's (``man2/open.2.pdf``), written in
    ``into``."""
    questions = json.loads(QUESTIONS.read_text(encoding="utf-8"))
    for q in questions:
        q["source"] = q["source"].removesuffix(".txt") + ".pdf"
    path = into / "manpages_questions_pdf.json"
    path.write_text(json.dumps(questions, ensure_ascii=False), encoding="utf-8")
    return path


def check(out: Path) -> list[str]:
    """Questions whose ``evidence`` (a regular expression, case and spacing ignored) is not
    in their document: each question was written from a passage of its page, and this keeps
    the file honest when the packages change."""
    problems = []
    wanted = json.loads(MANIFEST.read_text(encoding="utf-8"))["pages"]
    for n, q in enumerate(json.loads(QUESTIONS.read_text(encoding="utf-8"))):
        page = q["source"].removesuffix(".txt")
        if wanted.get(page) != q["lang"].split("-")[1]:
            problems.append(f"{n}: {page} is not in the corpus in the language {q['lang']} says")
            continue
        path = out / q["source"]
        text = " ".join(path.read_text(encoding="utf-8").split()) if path.exists() else ""
        pattern = re.sub(r"(\\ | )+", r"\\s+", q["evidence"])
        if not re.search(pattern, text, re.IGNORECASE):
            problems.append(f"{n}: {q['evidence']!r} not found in {q['source']}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--make-manifest", action="store_true")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--pdf", action="store_true", help="the pages as printed PDF manuals")
    args = parser.parse_args()
    if args.pdf:
        out = args.out if args.out != DEFAULT_OUT else DEFAULT_PDF_OUT
        print(f"{ensure(out, pdf=True)}: PDF manuals")
        return 0
    for tool in ("apt-get", "dpkg-deb", "groff"):
        if shutil.which(tool) is None:
            print(f"{tool} is needed (a Debian system with groff-base)", file=sys.stderr)
            return 1
    if args.check:
        problems = check(ensure(args.out))
        print("\n".join(problems) or f"{QUESTIONS.name}: every question's evidence found")
        return 1 if problems else 0
    with tempfile.TemporaryDirectory() as work:
        if args.make_manifest:
            manifest = make_manifest(Path(work))
            MANIFEST.parent.mkdir(parents=True, exist_ok=True)
            MANIFEST.write_text(
                json.dumps(manifest, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
            )
            pages_ = manifest["pages"]
            assert isinstance(pages_, dict)
            langs = list(pages_.values())
            print(f"{MANIFEST}: {len(langs)} pages, {langs.count('ru')} in Russian")
            return 0
        count = build(args.out, json.loads(MANIFEST.read_text(encoding="utf-8")), Path(work))
    print(f"{args.out}: {count} pages")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
