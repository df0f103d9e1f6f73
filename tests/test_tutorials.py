"""The tutorials' committed outputs against the committed results: a table a tutorial shows from
results/synth must be the one `make reproduce` wrote there last (`make notebooks` refreshes
them). The tutorials themselves run as tests through nbmake (tutorials/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_the_tutorials_show_tables_1_and_2_as_committed() -> None:
    shown = [(notebook, *table) for notebook in TUTORIALS for table in shown_tables(notebook)]
    numbers = [title.split()[2].rstrip(":") for _, title, _ in shown]  # "### Table 2: ..." -> 2
    assert numbers == ["1", "2"]
    for (notebook, _, text), number in zip(shown, numbers, strict=True):
        committed = (ROOT / "results" / "synth" / f"table{number}.md").read_text()
        assert text.strip() == committed.replace("# Table", "### Table", 1).strip(), (
            f"{notebook.name} shows another Table {number} than results/synth: make notebooks"
        )
