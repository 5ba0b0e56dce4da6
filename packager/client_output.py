"""What the Kaggle client (kaggle==2.2.5) prints when a command fails, read back: the error line, the HTTP status,
the client's hint, and whether asking again may help.

On an HTTP error the client prints the server's message (or requests' "404 Client Error: ..." line), a blank line
and a hint of a few lines keyed by the status; on a 401 it prints only its sign-in help; on a crash of its own,
"TypeName: message" and a line about `kaggle --debug`. The error line is then never the last line printed.
"""
from __future__ import annotations

import re
from typing import NamedTuple

# The first line of each hint block the client prints under an error, and the status it is printed for (500
# stands for any 5xx).
HINT_STATUS = {
    "You don't have access to this resource.": 403,
    "The resource was not found.": 404,
    "You have been rate limited.": 429,
    "This is a problem on Kaggle's side": 500,
}
AUTH_HELP = "Authentication required to call the Kaggle API."  # the 401 help's first line; no server message
CRASH = "If this is unexpected, you can re-run with `kaggle --debug"
STATUS_LINE = re.compile(r"(\d{3}) (?:Client|Server) Error\b")  # requests' HTTPError text, when not JSON
# Connection errors print requests' text alone; these are worth asking again.
NETWORK = re.compile(r"connection|timed out|timeout|max retries exceeded|name resolution|remote end closed",
                     re.IGNORECASE)
# The server's ways of saying a dataset does not exist.
MISSING = re.compile(r"not found|does not exist|doesn't exist|no such dataset", re.IGNORECASE)


class ClientError(NamedTuple):
    line: str           # the error line as printed (the server's message, or the client's own)
    status: int | None  # the HTTP status, where the output shows it (500: some 5xx)
    hint: str | None    # the client's hint, on one line
    crashed: bool = False

    @property
    def transient(self) -> bool:
        """Whether asking again may get another answer: rate limits, server errors, a dropped connection."""
        if self.status is not None:
            return self.status == 429 or self.status >= 500
        return not self.crashed and bool(NETWORK.search(self.line))

    @property
    def missing(self) -> bool:
        """Whether the server said the thing asked for does not exist."""
        return self.status == 404 or bool(MISSING.search(self.line))

    def __str__(self) -> str:
        """The error line, led by its HTTP status where the line itself does not say it."""
        if self.status is None or STATUS_LINE.match(self.line):
            return self.line
        return f"HTTP {self.status if self.status != 500 else '5xx'}: {self.line}"


def output_lines(output: str) -> list[str]:
    """The non-blank lines of what the client printed, stripped."""
    return [line.strip() for line in output.splitlines() if line.strip()]


def read_error(output: str) -> ClientError | None:
    """The error in what a failed client command printed; None when it printed nothing."""
    lines = output_lines(output)
    if not lines:
        return None
    if any(line.startswith(AUTH_HELP) for line in lines):
        return ClientError(AUTH_HELP, 401, None)
    for index, line in enumerate(lines):
        status = next((status for start, status in HINT_STATUS.items() if line.startswith(start)), None)
        if status is not None and index > 0:
            return error_before(lines[index - 1], status, " ".join(lines[index:]))
        if line.startswith(CRASH) and index > 0:
            return ClientError(lines[index - 1], None, "a crash of the client: `kaggle --debug` shows where",
                               crashed=True)
    return error_before(lines[-1], None, None)


def error_before(line: str, hinted: int | None, hint: str | None) -> ClientError:
    """The error line with the status its text gives (requests' "404 Client Error"), else the one its hint gives."""
    stated = STATUS_LINE.match(line)
    return ClientError(line, int(stated.group(1)) if stated else hinted, hint)
