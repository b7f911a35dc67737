"""Files that are never left half written: :func:`atomic_open`.

Every file the project writes for later use (checkpoints and their ``last_checkpoint`` tag,
converted weights and configs, result records, dataset annotations) goes through
:func:`atomic_open`: a process killed while writing leaves the previous file as it was.
"""
import os
import tempfile

__all__ = ["atomic_open"]


class atomic_open:
    """Context manager: open ``path`` for writing (``mode`` ``"w"`` or ``"wb"``) through a
    temporary file in the same folder, which is flushed to disk and renamed over ``path`` in one
    ``os.replace`` on a clean exit, and deleted on an exception. The file gets mode 0644 (not
    ``mkstemp``'s 0600, which would hide checkpoints from other users).

    Raises:
        ValueError: for a mode other than ``"w"`` or ``"wb"``.
    """

    def __init__(self, path: str, mode: str = "w"):
        if mode not in ("w", "wb"):
            raise ValueError(f"atomic_open writes whole files: mode {mode!r} is not 'w' or 'wb'")
        self.path = os.fspath(path)
        self.mode = mode

    def __enter__(self):
        folder = os.path.dirname(os.path.abspath(self.path))
        fd, self.tmp_path = tempfile.mkstemp(prefix=os.path.basename(self.path) + ".", suffix=".tmp", dir=folder)
        self.file = os.fdopen(fd, self.mode)
        return self.file

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.file.flush()
                os.fsync(self.file.fileno())
            self.file.close()
            if exc_type is None:
                os.chmod(self.tmp_path, 0o644)
                os.replace(self.tmp_path, self.path)
        finally:
            if os.path.exists(self.tmp_path):
                os.remove(self.tmp_path)
        return False
