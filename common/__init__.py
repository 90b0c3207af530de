"""What both deployables share beyond the protocol: reading settings from the environment
(``env``), the request limits they both enforce (``limits``) and logging set-up (``logs``).
Standard library and ``protocol`` only, so either image can carry it."""
