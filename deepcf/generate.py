"""`python -m deepcf.generate`: the earlier name of `python -m deepcf.export` (same arguments)."""

import sys

from deepcf.export import main

if __name__ == "__main__":
    main(sys.argv[1:], prog="deepcf.generate")
