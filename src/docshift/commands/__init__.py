"""One function per CLI command, each taking a Config (the CLI only parses flags and prints)."""
