"""`python -m planner.cli`: run the command line and exit with its status, as the `planner` console script does."""

import sys

from planner.cli import main

if __name__ == "__main__":
    sys.exit(main())
