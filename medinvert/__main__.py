"""`python -m medinvert ...` (also what `torchrun -m medinvert ...` runs)."""

from medinvert.cli import exit_process, main

if __name__ == "__main__":
    exit_process(main())
