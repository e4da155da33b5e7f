"""What every benchmark script shares: its command line and bench/results.json."""

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).with_name("results.json")


def arguments(description: str, results: Path = RESULTS) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes (a few steps, turns, trials): checks that the script runs and records its "
        "figures, as `make test` does; its timings mean nothing",
    )
    parser.add_argument("--results", type=Path, default=results, help="JSON file the figures are merged into")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="experiment config, e.g. data.dir=...")
    return parser.parse_args()


def record(figures: dict[str, float | str], path: Path = RESULTS) -> None:
    """Merge `figures` (numbers, and names such as the device measured on) into the JSON at `path`."""
    previous = json.loads(path.read_text()) if path.exists() else {}
    rounded = {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}
    path.write_text(json.dumps(previous | rounded, indent=2, sort_keys=True) + "\n")
    print(f"wrote {path}")
