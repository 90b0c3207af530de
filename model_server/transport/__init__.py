"""The model server's side of the ZMQ protocol: the ROUTER socket, its IO thread and what each
request does (``server``)."""
