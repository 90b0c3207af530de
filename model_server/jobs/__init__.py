"""Jobs: the table of every job's state and the bounded queue (``table``), and their records and
images on disk (``outputs``), so nothing is lost to eviction or a restart."""
