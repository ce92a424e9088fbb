"""Atomic output folders: build in a hidden sibling, rename into place only when complete."""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import UsageError

TMP_MARK = ".seqcls-tmp-"


def check_output(output: Path, overwrite: bool) -> None:
    """Refuse an existing output unless ``overwrite``; refuse a file in the way."""
    if output.exists() and not overwrite:
        raise UsageError(f"Output {output} already exists; pass --overwrite to replace it or choose another --output.")
    if output.exists() and not output.is_dir():
        raise UsageError(f"Output {output} is a file, not a folder; remove it or choose another --output.")
    if not output.parent.exists():
        raise UsageError(f"The parent folder of {output} does not exist; create it first.")


@contextmanager
def atomic_folder(output: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``output`` with one rename.

    On any error (or a kill) the temporary folder is removed (or left hidden under a ``.name.seqcls-tmp-*``
    name), so ``output`` never looks complete when it is not.
    """
    output = Path(output)
    check_output(output, overwrite)
    tmp = output.parent / f".{output.name}{TMP_MARK}{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        check_output(output, overwrite)
        if output.exists():
            old = output.parent / f".{output.name}{TMP_MARK}old-{uuid.uuid4().hex[:8]}"
            os.rename(output, old)
            os.rename(tmp, output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
