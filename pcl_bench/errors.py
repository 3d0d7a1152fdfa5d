"""The one exception type for bad user input (wrong path, wrong layout, incompatible options)."""


class UsageError(Exception):
    """A problem the user can fix. The CLI prints it as one line and exits with code 2.

    The message names the problem and the fix, e.g.
    ``"--data-root /x: no 'train/' folder; expected <root>/train/<class>/<image>"``.
    """
