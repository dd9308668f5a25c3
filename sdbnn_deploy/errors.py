"""The one exception type for mistakes a user can make (bad file, bad option, unsupported layer).

The command line prints its message on one line and exits with status 2. Anything else that
escapes is our bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input; the message names the file, layer or option at fault."""
