"""Errors, paths, progress, validation, versions and statuses: what every layer above uses."""
