"""`python -m cascadeseg` (used by `torchrun -m cascadeseg train ...`)."""

from __future__ import annotations

import sys

from cascadeseg.cli import main

if __name__ == "__main__":
    sys.exit(main())
