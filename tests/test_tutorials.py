"""The tutorials' committed outputs against the committed results: a table a tutorial shows from
results/synth must be the one `make reproduce` wrote there last (`make notebooks` refreshes
them). The tutorials themselves run as tests through nbmake (tutorials/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = sorted((ROOT / "tutorials").glob("*.ipynb"))


def shown_tables(notebook: Path) -> list[tuple[str, str]]:
    """(first line, text) of each results table a code cell of `notebook` shows as markdown."""
    tables = []
    for cell in json.loads(notebook.read_text())["cells"]:
        for output in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            text = "".join(output.get("data", {}).get("text/markdown", ""))
            if text.startswith("### Table "):
                tables.append((text.splitlines()[0], text))
    return tables


@pytest.mark.parametrize("notebook", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_a_results_table_in_a_tutorial_is_the_committed_one(notebook: Path) -> None:
    for title, text in shown_tables(notebook):
        number = title.split()[2].rstrip(":")  # "### Table 2: action recognition" -> "2"
        committed = (ROOT / "results" / "synth" / f"table{number}.md").read_text()
        assert text.strip() == committed.replace("# Table", "### Table", 1).strip(), (
            f"{notebook.name} shows another Table {number} than results/synth: make notebooks"
        )


def test_the_tutorials_show_tables_1_and_2() -> None:
    titles = [title for notebook in TUTORIALS for title, _ in shown_tables(notebook)]
    assert [t.split()[2].rstrip(":") for t in titles] == ["1", "2"]
