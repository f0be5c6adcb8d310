"""The one exception type for mistakes a user can fix."""


class UserError(ValueError):
    """Bad input, bad settings or an unusable store.

    The message is one line that names the offending file or setting and says what
    was expected; the command line prints it without a traceback and exits non-zero.
    A ``ValueError``, so that library callers can catch it the usual way.
    """
