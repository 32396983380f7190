"""Techniques beyond the built-in ones: every module here registers one (see `compress.technique`)."""
