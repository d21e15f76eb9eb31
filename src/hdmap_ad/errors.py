"""The one exception type the pipeline raises for bad input.

The CLI turns it into a single-line message and exit code 2; anything else is a bug and
keeps its traceback.
"""


class InputError(Exception):
    """Bad input: a file, folder or params key that the pipeline cannot use.

    The message names the file or key and the problem, e.g.
    ``InputError("data/x/000001.tiff: contains NaN")``.
    """
