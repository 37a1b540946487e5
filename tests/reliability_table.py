"""Render the reliability records of a test run as the table in RELIABILITY.md.

    RAYINPAINT_RELIABILITY_JSON=/tmp/reliability.json python -m pytest -q
    python tests/reliability_table.py /tmp/reliability.json          # rewrites the table in RELIABILITY.md

The records come from the `reliability` fixture (tests/conftest.py): only tests that passed contribute. The
table is written between the two marker lines of RELIABILITY.md; the rest of the file is left as it is.
"""

from __future__ import annotations

import datetime
import json
import platform
import sys
from pathlib import Path

START, END = "<!-- reliability-table:start -->", "<!-- reliability-table:end -->"
ORDER = {"bad input": 0, "fault": 1, "load": 2, "security": 3}


def render(records: list[dict], when: str) -> str:
    rows = sorted(records, key=lambda r: (ORDER.get(r["area"], 9), r["test"]))
    areas = {}
    for r in rows:
        areas[r["area"]] = areas.get(r["area"], 0) + 1
    lines = [f"Generated {when} on {platform.system()} {platform.machine()}, Python {platform.python_version()}, "
             f"from {len(rows)} records of passing tests ("
             + ", ".join(f"{n} {a}" for a, n in sorted(areas.items(), key=lambda kv: ORDER.get(kv[0], 9))) + ").",
             "", "| area | what was tried | count | outcome (asserted) | test |", "|---|---|---|---|---|"]
    for r in rows:
        cells = [r["area"], r["kind"], str(r["count"]), r["outcome"], f"`{r['test'].split('[')[0]}`"]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    records = json.loads(Path(argv[1]).read_text())
    doc = Path(__file__).resolve().parents[1] / "RELIABILITY.md"
    text = doc.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    doc.write_text(f"{head}{START}\n{render(records, when)}\n{END}{tail}")
    print(f"{len(records)} records written to {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
