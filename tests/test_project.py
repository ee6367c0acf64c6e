"""The project's own plumbing: dependency lists agree, chapters and their notebooks are in sync,
and the stored outputs come from the current code."""

from __future__ import annotations

import functools
import json
import re
import sys
import tomllib
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"

sys.path.insert(0, str(ROOT / "scripts"))
import fingerprint  # noqa: E402  (scripts/fingerprint.py)


def _toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part.get("chapters", [])]
    return files


CHAPTERS = sorted(BOOK.glob("*.md"))


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"])
    for extra in ("book", "test"):
        wanted |= set(project["optional-dependencies"][extra])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {p for p in pip if not p.startswith("-e")}
    assert listed == wanted, f"only in environment.yml: {listed - wanted}; only in pyproject: {wanted - listed}"


def test_every_toc_entry_is_a_paired_chapter():
    for entry in _toc_files():
        md, nb = ROOT / f"{entry}.md", ROOT / f"{entry}.ipynb"
        assert md.exists(), f"{entry}.md (the chapter source) is missing"
        assert nb.exists(), f"{entry}.ipynb is missing: run ./run.sh chapters {entry}.md"


def test_every_chapter_is_in_the_toc():
    listed = {ROOT / f"{e}.md" for e in _toc_files()}
    assert set(CHAPTERS) <= listed, f"not in _toc.yml: {sorted(map(str, set(CHAPTERS) - listed))}"


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.name)
def test_chapter_header_is_jupytext_myst(md: Path):
    head = md.read_text().splitlines()[:12]
    assert head[0] == "---", "the jupytext header must start on line 1"
    assert "format_name: myst" in "\n".join(head), "MyST-NB needs jupytext's text_representation header"
    assert "formats: ipynb,md:myst" in "\n".join(head), "chapters are paired with their .ipynb"


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.name)
def test_notebook_inputs_match_the_text(md: Path):
    text = jupytext.read(md)
    stored = nbformat.read(md.with_suffix(".ipynb"), as_version=4)
    a = [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in text.cells]
    b = [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in stored.cells]
    assert a == b, (
        f"{md.name} and its .ipynb differ: run ./run.sh chapters {md.relative_to(ROOT)} "
        "(or scripts/execute_chapters.py --sync-only for a text-only edit)"
    )


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.name)
def test_stored_outputs_come_from_a_full_run(md: Path):
    stored = nbformat.read(md.with_suffix(".ipynb"), as_version=4)
    code = [c for c in stored.cells if c.cell_type == "code"]
    if not code:
        return
    assert all(c.execution_count is not None for c in code), f"{md.name}: some cells were never executed"
    outputs = json.dumps([c.outputs for c in code])
    assert "mode=full" in outputs, f"{md.name}: stored outputs are not from a full-mode run"
    assert "mode=quick" not in outputs
    assert '"ename"' not in outputs, f"{md.name}: a stored output is an error"
    assert "application/vnd.jupyter.widget" not in outputs, f"{md.name}: widget state in stored outputs"
    assert "widgets" not in stored.metadata


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.name)
def test_figures_are_stored(md: Path):
    stored = nbformat.read(md.with_suffix(".ipynb"), as_version=4)
    for cell in stored.cells:
        if cell.cell_type == "code" and "plt.show()" in cell.source:
            kinds = {k for o in cell.outputs for k in o.get("data", {})}
            assert "image/png" in kinds, (
                f"{md.name}: a cell that shows a figure stored none (was MPLBACKEND set for the kernel?):\n"
                + cell.source[:200]
            )


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.name)
def test_chapter_uses_plain_progress(md: Path):
    assert not re.search(r"tqdm\.(auto|notebook)", md.read_text()), "use tqdm.std or plain lines in chapters"


@functools.cache
def _package() -> fingerprint.Package:
    return fingerprint.Package(ROOT / "vaetut")


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.name)
def test_stored_outputs_come_from_the_current_code(md: Path):
    """The vaetut definitions a chapter depends on, and its own code cells, are those its
    stored run executed.

    scripts/execute_chapters.py records, in the notebook's metadata, a hash of each top-level
    definition the chapter reaches and of its code cells (see scripts/fingerprint.py); a
    docstring, a comment or a function the chapter never reaches does not count."""
    text = jupytext.read(md)
    if not any(c.cell_type == "code" for c in text.cells):
        return
    rerun = f"run ./run.sh chapters {md.relative_to(ROOT)}"
    stored = nbformat.read(md.with_suffix(".ipynb"), as_version=4).metadata.get(fingerprint.RECORD)
    assert stored, (
        f"{md.name}: no fingerprint of the code that produced its stored outputs "
        f"(metadata.{fingerprint.RECORD}), so they cannot be shown to be current: {rerun}"
    )
    assert stored.get("version") == fingerprint.VERSION, (
        f"{md.name}: its fingerprint was made with other hashing rules (version {stored.get('version')}, "
        f"now {fingerprint.VERSION}): {rerun}"
    )
    assert stored.get("mode") == "full", f"{md.name}: stored outputs are from a {stored.get('mode')}-mode run: {rerun}"
    changes = fingerprint.stale(stored["code"], fingerprint.chapter_fingerprint(text, md.parent, _package()))
    assert not changes, (
        f"{md.name}: its stored outputs come from code that has changed since:\n"
        + "".join(f"  {what}: {', '.join(keys)}\n" for what, keys in changes.items())
        + rerun
    )


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.name)
def test_stored_outputs_show_the_current_results(md: Path):
    """A chapter that shows a results file printed its digest (vaetut.results.chapter_results);
    the file on disk must still be the one it showed."""
    from vaetut.results import file_digest

    stored = nbformat.read(md.with_suffix(".ipynb"), as_version=4)
    text = json.dumps([c.get("outputs", []) for c in stored.cells if c.cell_type == "code"])
    for name, digest in re.findall(r"results/([\w.-]+\.json) sha256 ([0-9a-f]{12})", text):
        path = ROOT / "results" / name
        assert path.exists(), f"{md.name} shows results/{name}, which is not in the repository"
        assert file_digest(path) == digest, (
            f"{md.name} shows results/{name} as it was before it changed: run ./run.sh chapters {md.relative_to(ROOT)}"
        )
