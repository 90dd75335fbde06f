"""The lake: one Apache Iceberg table that many local stores append to, read as one store.

* ``curate.lake.table``: where the lake is, its columns, and the appends (``push``, ``LakePusher``).
* ``curate.lake.maintain``: expiry, compaction and orphan cleanup (``curate lake maintain``).
* ``curate.lake.reader``: the lake read as a store (``LakeStore``, ``pull``, ``open_store``).

Nothing is imported here, so that importing one module does not load pyiceberg for the others.
"""
