"""What gridcharge keeps on disk, in the state directory: the variables (``variables``, saved by
``persistence``), the grid signal log (``gridlog`` with ``gridlog_file`` and ``gridlog_budget``),
the state directory's own helpers (``statedir``), and backups of all of it (``backup``,
``backup_manifest``, ``restore``).
"""
