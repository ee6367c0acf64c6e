"""Execute book chapters and store their outputs in the paired notebooks.

Each chapter is a jupytext MyST file ``book/<name>.md`` paired with
``book/<name>.ipynb``. This script reads the ``.md`` (the source of truth),
executes it in ``book/`` with the mode given (full by default: the outputs the
published book shows) and writes the ``.ipynb`` with those outputs, and, in its
metadata (``vaetut``), the mode and the fingerprint of the package code the chapter
depends on (``scripts/fingerprint.py``), which ``tests/test_project.py`` compares
with the current code.

    python scripts/execute_chapters.py                 # every chapter in _toc.yml
    python scripts/execute_chapters.py book/elbo.md    # one chapter
    python scripts/execute_chapters.py --mode quick book/elbo.md   # a fast try
    python scripts/execute_chapters.py --sync-only     # refresh inputs, keep outputs

Run it through ``./run.sh chapters [...]`` so the environment is set up.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fingerprint  # noqa: E402  (scripts/fingerprint.py)

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"


def toc_chapters() -> list[Path]:
    """Chapter sources in table-of-contents order."""
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part.get("chapters", [])]
    return [ROOT / f"{f}.md" for f in files]


def strip_volatile(nb: nbformat.NotebookNode) -> None:
    """Drop run-dependent metadata (timings, widget state) from a notebook."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            data.pop("application/vnd.jupyter.widget-view+json", None)


def with_outputs_from(text_nb, old_nb) -> nbformat.NotebookNode:
    """The inputs of ``text_nb`` with the outputs of ``old_nb`` where the sources match."""
    nb = copy.deepcopy(text_nb)
    old = {(c.cell_type, c.source): c for c in old_nb.cells if c.cell_type == "code"}
    for cell in nb.cells:
        if cell.cell_type == "code" and (cell.cell_type, cell.source) in old:
            prev = old[(cell.cell_type, cell.source)]
            cell.outputs, cell.execution_count = prev.get("outputs", []), prev.get("execution_count")
    return nb


def execute(md: Path, mode: str, timeout: int | None) -> float:
    nb = jupytext.read(md)
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
    env_before = os.environ.get("VAETUT_MODE")
    os.environ["VAETUT_MODE"] = mode
    # the kernel inherits this environment: a non-interactive MPLBACKEND (run.sh sets
    # Agg for the tests) would stop plt.show() from storing figures in the notebook
    os.environ.pop("MPLBACKEND", None)
    code = fingerprint.chapter_fingerprint(nb, md.parent)  # of the code the kernel is about to import
    start = time.perf_counter()
    try:
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(md.parent)}},
            record_timing=False,
        )
        client.execute()
    finally:
        if env_before is None:
            os.environ.pop("VAETUT_MODE", None)
        else:
            os.environ["VAETUT_MODE"] = env_before
    strip_volatile(nb)
    fingerprint.record(nb, mode, code)
    jupytext.write(nb, md.with_suffix(".ipynb"), fmt="ipynb")
    changed = fingerprint.stale(code, fingerprint.chapter_fingerprint(nb, md.parent))
    if changed:  # the stored fingerprint is the one from the start, so the tests will flag this run
        print(f"  warning: vaetut changed during the run ({changed}); run {md.name} again", flush=True)
    return time.perf_counter() - start


def sync_only(md: Path) -> None:
    ipynb = md.with_suffix(".ipynb")
    text_nb = jupytext.read(md)
    old = nbformat.read(ipynb, as_version=4) if ipynb.exists() else nbformat.v4.new_notebook()
    nb = with_outputs_from(text_nb, old)
    if fingerprint.RECORD in old.metadata:  # the kept outputs still come from that code
        nb.metadata[fingerprint.RECORD] = old.metadata[fingerprint.RECORD]
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
    strip_volatile(nb)
    jupytext.write(nb, ipynb, fmt="ipynb")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chapters", nargs="*", type=Path, help="book/<name>.md files (default: all in _toc.yml)")
    parser.add_argument("--mode", choices=("full", "quick"), default="full")
    parser.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds (default none)")
    parser.add_argument("--sync-only", action="store_true", help="update inputs of the .ipynb, keep matching outputs")
    args = parser.parse_args(argv)
    chapters = [c.resolve() for c in args.chapters] or toc_chapters()
    for md in chapters:
        if md.suffix != ".md" or not md.exists():
            parser.error(f"{md} is not a chapter source (book/<name>.md)")
    for md in chapters:
        rel = md.relative_to(ROOT)
        if args.sync_only:
            sync_only(md)
            print(f"synced {rel}")
            continue
        print(f"executing {rel} in {args.mode} mode ...", flush=True)
        seconds = execute(md, args.mode, args.timeout)
        print(f"  wrote {rel.with_suffix('.ipynb')} in {seconds / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
