"""The `lsr-os` command line from a source tree: `python cli.py ...` runs `lsr_os.cli`.

The click app lives in the package (`lsr_os/cli.py`), so an install puts no top-level module
named `cli` into site-packages; this file is the design card's entry point at the repository root.
"""

from lsr_os.cli import main

if __name__ == "__main__":
    main()
