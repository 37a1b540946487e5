"""Ray Data job, command line, demo and benchmark (the only place Ray is imported)."""
