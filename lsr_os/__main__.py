"""`python -m lsr_os` runs the same CLI as the `lsr-os` command."""

from lsr_os.cli import main

main()
