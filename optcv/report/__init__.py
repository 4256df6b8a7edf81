"""Display only: one module per kind of report, each rendering typed results or their dicts as text or figures.

Nothing here measures or decides; nothing below this package draws (matplotlib is imported here alone).
"""
