"""`python -m lsr_os` runs the same CLI as the `lsr-os` command."""

from cli import main

main()
