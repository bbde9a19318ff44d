"""User-facing errors: one line that names the problem and the field, never a traceback."""


class InputError(Exception):
    """Bad input from a user (file, field, option). The CLI prints it on one line and exits 2."""
