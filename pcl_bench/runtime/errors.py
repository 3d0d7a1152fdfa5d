"""The exception types for bad user input (wrong path, wrong layout, incompatible options, unreadable files)."""


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


def one_line(error: UsageError) -> str:
    """The message of ``error`` as one line, also when a DataLoader worker re-raised it with the worker's
    traceback ("Caught ... in DataLoader worker process 0. Original Traceback ...")."""
    text = str(error).strip()
    if "\n" not in text:
        return text
    last = text.splitlines()[-1]
    prefix = f"{type(error).__module__}.{type(error).__name__}: "
    return last.removeprefix(prefix)
