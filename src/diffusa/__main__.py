"""`python -m diffusa ARGS`: the command line (`diffusa.cli.main`), for an environment without the `diffusa` script."""

import sys

from diffusa.cli import main

if __name__ == "__main__":
    sys.exit(main())
