"""The large retrieval benchmark's corpus: Debian's Linux man pages, Russian and English.

    python bench/mancorpus.py [--out DIR]        # build (apt-get download, dpkg -x, groff)
    python bench/mancorpus.py --check            # every question's evidence is in its page
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
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "bench" / "data" / "manpages.json"
QUESTIONS = ROOT / "bench" / "data" / "manpages_questions.json"
DEFAULT_OUT = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "beseda" / "mancorpus"
)
PACKAGES = {
    "en": ["manpages", "manpages-dev"],
    "ru": ["manpages-ru", "manpages-ru-dev"],
}
# A Russian page counts as translated from this share of Cyrillic letters up (code, names
# and untranslated paragraphs are Latin: fully translated pages reach about 0.7-0.9).
TRANSLATED = 0.5
GROFF = ["groff", "-k", "-t", "-man", "-Tutf8", "-P-cbou", "-rLL=160n", "-rHY=0"]
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


def render(path: Path) -> str:
    source = gzip.decompress(path.read_bytes())
    done = subprocess.run(GROFF, input=source, capture_output=True, check=True)
    return done.stdout.decode("utf-8", "replace")


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


def build(out: Path, manifest: dict[str, object], work: Path) -> int:
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
        target = out / f"{page}.txt"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render(path), encoding="utf-8")
    if missing:
        print(f"warning: {len(missing)} pages not in these packages: {missing}", file=sys.stderr)
    (out / ".complete").write_text(json.dumps(manifest["packages"]), encoding="utf-8")
    return len(wanted) - len(missing)


def ensure(out: Path = DEFAULT_OUT) -> Path:
    """The corpus folder, built first if it is not there yet."""
    if not (out / ".complete").exists():
        manifest = json.loads(MANIFEST.read_text(encoding="utf-8"))
        with tempfile.TemporaryDirectory() as work:
            count = build(out, manifest, Path(work))
        print(f"# built {count} man pages into {out}", file=sys.stderr)
    return out


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
    args = parser.parse_args()
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
