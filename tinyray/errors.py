"""The one exception type for a user's mistake: the CLI prints its message as one line."""


class TinyrayError(Exception):
    """A problem the user can fix (bad flag, missing file, unreachable endpoint).

    The message is a complete sentence that says what is wrong and, where it can, what to do.
    The CLI prints it as ``tinyray: error: <message>`` with no traceback and exits non-zero.
    """


def tinyray_message(text: str | None) -> str | None:
    """The last TinyrayError message in ``text`` (a traceback, Tune's error.txt, a wrapped
    exception's str): the one parser of tinyray's one-line verdicts out of text. A message that
    crossed a process boundary arrives inside Ray's and Tune's wrappers, each adding lines."""
    found = [line.split("TinyrayError: ", 1)[1].strip() for line in (text or "").splitlines()
             if "TinyrayError: " in line]
    return found[-1] if found and found[-1] else None


def failure_line(text: str | None) -> str | None:
    """The one line a failed trial ends in, from its error text: the TinyrayError message that
    ``tinyray train`` would print, else the text's last line (at most 500 characters)."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        return None
    return (tinyray_message(text) or lines[-1])[:500]
