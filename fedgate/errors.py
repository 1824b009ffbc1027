"""The one exception type for bad input: what the user gave (a file, a row, a key, a value,
a model or checkpoint) is wrong, and the message says where and what, in one line. The
command line prints it as ``fedgate: error: <message>`` without a traceback; anything else
that goes wrong is a bug and keeps its traceback."""


class InputError(ValueError):
    """Bad input, named in one line (file:line, key, value or path first)."""
