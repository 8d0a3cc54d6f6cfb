"""Where the command line finds the API and its key.

Order: `--url`/`--key`, then `TASKQ_URL`/`TASKQ_API_KEY` (typer reads those), then the key
file `.taskq/api-key` that `scripts/run.sh` writes: in the current directory, a parent up
to the repository root, or the checkout this package runs from.
"""

from __future__ import annotations

from pathlib import Path

KEY_FILE = Path(".taskq") / "api-key"
PACKAGE_CHECKOUT = Path(__file__).resolve().parents[1]


def key_file_candidates(cwd: Path, checkout: Path = PACKAGE_CHECKOUT) -> list[Path]:
    """Key files to try, nearest first: cwd and its parents up to the repository root
    (the first directory holding `.git`), then the checkout of this package."""
    candidates = []
    for directory in (cwd, *cwd.parents):
        candidates.append(directory / KEY_FILE)
        if (directory / ".git").exists():
            break
    candidates.append(checkout / KEY_FILE)
    return list(dict.fromkeys(candidates))


def read_key_file(cwd: Path, checkout: Path = PACKAGE_CHECKOUT) -> str | None:
    for path in key_file_candidates(cwd, checkout):
        try:
            key = path.read_text().strip()
        except OSError:
            continue
        if key:
            return key
    return None


def resolve_key(option: str | None, cwd: Path, checkout: Path = PACKAGE_CHECKOUT) -> str | None:
    """The key given (option or environment), else the key file's."""
    return option or read_key_file(cwd, checkout)
