"""`tunesmith ui`: a local browser app to watch, start, stop, resume, compare and chat with runs.

A FastAPI app (`tunesmith.ui.app.create_app`) with one static page and server-sent events; it talks to
`tunesmith.api` and reads run folders, never a stage's internals. Importing this package imports nothing.
"""

__all__ = ["create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from tunesmith.ui.app import create_app

        return create_app
    raise AttributeError(name)
