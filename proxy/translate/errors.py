from __future__ import annotations


class TranslationError(Exception):
    """Invalid client input; the gateway answers 400 in the caller's own error format.

    ``message`` reads like the vendor's own ("messages.1.content.0.type: ..."), ``param``
    names the offending field in the surface's path notation (None when it is the body).
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def __repr__(self) -> str:
        return f"TranslationError({self.message!r}, param={self.param!r})"
