"""User-facing errors: the CLI prints them as one line and exits non-zero (no traceback)."""


class SeqrlError(Exception):
    """A problem with the user's input (recipe, data, model, files): message says what to do."""


class ConfigError(SeqrlError):
    """A recipe that cannot be loaded: unknown key, wrong type, out-of-range value."""


class DataError(SeqrlError):
    """Data that cannot be used: missing file, wrong field name, empty split."""
