"""Exit codes of every ``napari-edgesam`` subcommand.

- 0 success;
- 2 bad arguments or bad input (a one-line reason, no traceback);
- 3 model not available (not downloaded, not found, corrupt or not an EdgeSAM file);
- 1 anything else.
"""

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_NO_MODEL = 3
