"""File-format readers: leaves that turn published files into native tensors.

They know nothing of the registry or the catalog.
"""
