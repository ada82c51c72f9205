"""``python -m particlescore ...`` = the ``particlescore`` command (also what ``torchrun -m
particlescore run ...`` starts on every rank)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
