"""The one exception the data subpackage raises for bad, missing or unreachable files."""

from __future__ import annotations

from os import PathLike

FIX_DAMAGED = (
    "delete the file and re-download it (`bnlab data download`), install the Debian package "
    "`dataset-fashion-mnist` (apt install dataset-fashion-mnist), or pass --data-dir (root=) "
    "a directory holding the official files"
)
FIX_MISSING = (
    "connect to the internet and run `bnlab data download`, install the Debian package "
    "`dataset-fashion-mnist` (apt install dataset-fashion-mnist), or pass --data-dir (root=) "
    "a directory holding the four Fashion-MNIST .gz files"
)
FIX_WRITABLE = (
    "free disk space, or pass --data-dir (root=) a writable directory with room for the "
    "four files (~30 MB)"
)
FIX_CUSTOM = "correct or replace the file: it is in a directory you chose (--data-dir, $BNLAB_DATA)"
FIX_UNREADABLE = "make the directory readable (its permissions), or pass --data-dir another one"


class DatasetError(Exception):
    """A Fashion-MNIST file is missing, unreadable or not what it should be.

    ``str(err)`` is one line naming the file, what was expected, what was found and the fix;
    the parts are also kept as attributes ``file``, ``expected``, ``found`` and ``fix``.
    """

    def __init__(
        self, file: str | PathLike[str], expected: str, found: str, fix: str = FIX_DAMAGED
    ) -> None:
        self.file, self.expected, self.found, self.fix = str(file), expected, found, fix
        message = f"{self.file}: expected {expected}, found {found}; fix: {fix}"
        super().__init__(" ".join(message.split()))  # one line, whatever the parts hold

    def __reduce__(self):  # picklable across DataLoader workers / multiprocessing
        return (type(self), (self.file, self.expected, self.found, self.fix))
