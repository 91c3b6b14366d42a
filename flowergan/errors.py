"""User errors: one clear line that names the file or field at fault, never a traceback."""


class UserError(Exception):
    """Bad input from the user (a path, a value, a file); the CLI prints it as one line and exits 2."""
