"""The verb-first command line."""
