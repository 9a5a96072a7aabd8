"""Case ids are data, never paths: the one check for every id that comes from a data set's own files.

Ids enter from a TotalSegmentator meta.csv, AMOS and nnU-Net file names and dataset.json, a cache's
index.csv and the names of prediction inputs, and each becomes part of a file name (`cases/<id>_image.npy`,
`<id>.nii.gz`). An id that holds a separator or `..` would write or read outside the folder meant for it.
"""

from __future__ import annotations

import re
from pathlib import Path

from fedgin.errors import DataError

#: The longest case id: with a source prefix and a suffix such as `_image.npy` it stays far below the
#: 255 bytes a file name may have.
MAX_CASE_ID_LENGTH = 128
PLAIN_NAME_RULE = (
    f"a case id is a plain name: ASCII letters, digits, '-', '_' and '.', not starting with '.', "
    f"no '..', at most {MAX_CASE_ID_LENGTH} characters"
)
_PLAIN_CHARACTERS = re.compile(r"[A-Za-z0-9._-]*")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


def case_id_problem(case_id: str) -> str | None:
    """What makes `case_id` unfit to be part of a file name (e.g. "it is an absolute path"), or None."""
    if not case_id:
        return "it is empty"
    if case_id.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(case_id):
        return "it is an absolute path"
    if "/" in case_id or "\\" in case_id:
        return "it holds a path separator"
    if ".." in case_id:
        return "it holds '..'"
    if case_id.startswith("."):
        return "it starts with '.'"
    if len(case_id) > MAX_CASE_ID_LENGTH:
        return f"it is {len(case_id)} characters long"
    if not _PLAIN_CHARACTERS.fullmatch(case_id):
        odd = sorted({char for char in case_id if not _PLAIN_CHARACTERS.fullmatch(char)})
        return f"it holds {', '.join(repr(char) for char in odd[:5])}"
    return None


def plain_name_message(what: str, case_id: str, problem: str) -> str:
    """`image_id 'a/../x' is not a plain name (it holds a path separator; a case id is ...)`."""
    return f"{what} {case_id!r} is not a plain name ({problem}; {PLAIN_NAME_RULE})"


def check_case_id(case_id: str, where: str | Path, what: str = "case id") -> str:
    """`case_id` unchanged when it is a plain name; otherwise a DataError naming `where` (the file, with the
    row in `what`, e.g. "line 3: image_id")."""
    problem = case_id_problem(case_id)
    if problem is not None:
        raise DataError(where, plain_name_message(what, case_id, problem))
    return case_id


def require_plain(case_id: str) -> str:
    """`case_id` unchanged, or ValueError: the last check where a path is built from an id that every
    reader has checked already (a ValueError here is a fedgin bug, not bad input)."""
    problem = case_id_problem(case_id)
    if problem is not None:
        raise ValueError(plain_name_message("case id", case_id, problem))
    return case_id
