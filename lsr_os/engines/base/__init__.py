"""What both engines share, and the interface each backend fills in."""
