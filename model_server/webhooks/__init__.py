"""Signed webhooks: a job with ``callback_url`` has its end POSTed there (``outbox``: what is owed,
kept on disk across restarts; ``sender``: one HTTP attempt at an address checked at connect time;
``dispatcher``: the thread that sends what is due and retries with backoff; ``signing``: the
Standard Webhooks signature)."""
