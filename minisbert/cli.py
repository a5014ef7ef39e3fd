"""What the three command lines share: help that shows each flag's default, and one-line errors."""

import argparse
import sys


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The script's docstring as written, and each flag's default after its help."""


def run(main, script: str, errors=(FileNotFoundError, ValueError, TypeError)) -> None:
    """Run `main`; an error a user can fix is one line on stderr (exit 1), not a traceback."""
    try:
        main()
    except errors as error:
        sys.exit(f"{script}: {error}")
