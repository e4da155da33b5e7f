"""bench/results.json: every benchmark's figures, name -> number, merged run to run."""

import json
from pathlib import Path

RESULTS = Path(__file__).with_name("results.json")


def record(figures: dict[str, float]) -> None:
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    RESULTS.write_text(
        json.dumps(previous | {k: round(v, 4) for k, v in figures.items()}, indent=2, sort_keys=True) + "\n"
    )
    print(f"wrote {RESULTS}")
