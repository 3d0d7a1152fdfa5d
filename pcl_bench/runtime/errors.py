"""The exception types for bad user input (wrong path, wrong layout, incompatible options, unreadable files)
and for a full disk."""
import errno


class UsageError(Exception):
    """A problem the user can fix. The CLI prints it as one line and exits with code 2.

    The message names the problem and the fix, e.g.
    ``"--data-root /x: no 'train/' folder; expected <root>/train/<class>/<image>"``.
    """


class CorruptImage(UsageError):
    """An image file that cannot be decoded (truncated, empty, not an image)."""

    reason = ""

    @classmethod
    def at(cls, path: object, reason: str) -> "CorruptImage":
        error = cls(f"unreadable image {path} ({reason}); replace the file with a readable copy, or pass "
                    f"--skip-corrupt to find and leave out every unreadable image")
        error.reason = reason
        return error


class DiskFull(OSError):
    """A write failed for want of space (ENOSPC, or EDQUOT: over quota). The file being replaced is intact."""

    @classmethod
    def check(cls, error: BaseException, path: object) -> None:
        """Raise a DiskFull naming ``path`` if ``error`` comes from a full disk or quota; else return. The
        chain of causes is searched: torch.save reports a failed write as a RuntimeError raised after it."""
        cause: BaseException | None = error
        while cause is not None:
            if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
                raise cls(cause.errno, f"no space left on the device writing {path} ({cause.strerror}); the "
                                       f"file as it was before is intact: free space, then run the command "
                                       f"again (pretrain: with --resume)") from error
            cause = cause.__cause__ or cause.__context__

    def __str__(self) -> str:
        return self.strerror


def one_line(error: UsageError) -> str:
    """The message of ``error`` as one line, also when a DataLoader worker re-raised it with the worker's
    traceback ("Caught ... in DataLoader worker process 0. Original Traceback ...")."""
    text = str(error).strip()
    if "\n" not in text:
        return text
    last = text.splitlines()[-1]
    prefix = f"{type(error).__module__}.{type(error).__name__}: "
    return last.removeprefix(prefix)
