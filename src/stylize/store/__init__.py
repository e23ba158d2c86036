"""The model store: catalog, downloads, checksums, imports and conversions."""
