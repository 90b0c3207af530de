"""Getting a model ready: its download (resumable, with progress), the load's phases as /health
reports them, and the ``fetch`` command that downloads ahead of time."""
