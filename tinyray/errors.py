"""The one exception type for a user's mistake: the CLI prints its message as one line."""


class TinyrayError(Exception):
    """A problem the user can fix (bad flag, missing file, unreachable endpoint).

    The message is a complete sentence that says what is wrong and, where it can, what to do.
    The CLI prints it as ``tinyray: error: <message>`` with no traceback and exits non-zero.
    """
