"""Where the examples keep the small input files they generate on first use."""

import os
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
ROWS = int(os.environ.get("OPGRAPH_EXAMPLE_ROWS", "100000"))


def data_path(name: str) -> Path:
    DATA.mkdir(parents=True, exist_ok=True)
    return DATA / name


def shown(path: Path) -> str:
    """The path relative to the working directory when below it (shorter IR), else absolute."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel
