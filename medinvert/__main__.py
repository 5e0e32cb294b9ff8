"""`python -m medinvert ...` (also what `torchrun -m medinvert ...` runs)."""

import sys

from medinvert.cli import main

if __name__ == "__main__":
    sys.exit(main())
