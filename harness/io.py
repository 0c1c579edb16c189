"""File input and output: JSON Lines readers that name the file and line of a problem, atomic writes."""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.errors import DataError, UnsafeNameError


def read_jsonl(path: Path, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rows of a JSON Lines file; a missing file, bad JSON or a missing field names the file and line."""
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, line {lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise DataError(f"{path}, line {lineno}: missing field(s) {', '.join(missing)}")
            rows.append(row)
    return rows


def shared_mode(mode: int) -> int:
    """`mode` less the user's umask: what open() and mkdir() would give (0644 / 0755 by default), for files
    and folders made by mkstemp / mkdtemp, which are private (0600 / 0700) whatever the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def temp_path(path: Path) -> Path:
    """A unique temporary name beside `path` with the writer's pid in it (`.NAME.PID.RANDOM.tmp`), the shape
    atomic writes use, so a sweep removes what a killed writer left (harness/sweeps/sweep.py)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder, fsync, then rename: readers see old or new, never half."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """atomic_write_text for bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the writer's pid is in the name, so a sweep can remove what a killed writer left (harness/sweeps/sweep.py)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, shared_mode(0o666))
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def json_safe(obj: Any) -> Any:
    """`obj` with every NaN or infinite float as null: JSON has no NaN, and other readers refuse it."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    """Standard JSON (non-finite numbers as null), atomically."""
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2, sort_keys=True, default=str, allow_nan=False)
                      + "\n")


# Names of plugins, tasks, methods and runs become file names: letters, digits and . _ + -, starting with a
# letter or digit (so never `/`, `..` or a hidden file).
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")


def check_name(name: Any, what: str) -> str:
    """`name` if it is a safe file-name part (SAFE_NAME), else an error naming `what`."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise UnsafeNameError(f"{what} {name!r}: a name may hold letters, digits and . _ + - only, starting with a "
                              "letter or digit (it becomes part of file names)")
    return name


def inside(folder: Path, name: str) -> Path:
    """folder / name, refused when it would resolve outside `folder`."""
    path = Path(folder) / name
    if not path.resolve().is_relative_to(Path(folder).resolve()):
        raise UnsafeNameError(f"{name!r} would be written outside {folder}")
    return path


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run as a formula: text that starts like one (= + - @) and is not a
    number gets a leading apostrophe."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        try:
            float(value)
        except ValueError:
            return "'" + value
    return value


def markdown_text(text: Any) -> str:
    """Text for a Markdown table cell: `|` and backticks escaped, `& < >` as entities (never raw HTML)."""
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
            .replace("`", "\\`"))
