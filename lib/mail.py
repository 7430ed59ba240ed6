"""The default e-mail backend: each message in its own file that only this user can read.

Invitation and password-reset e-mails carry working links. Django's console backend would print
them into the server's log, where whoever reads the log could use them; its file backend writes
files every local user can read (0644). This backend writes each message to a new file created
0600 in a folder created 0700 (settings.EMAIL_FILE_PATH), and logs one line that says where it is,
without the body. Production sets EMAIL_BACKEND to SMTP (README, docs/security.md).
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend

logger = logging.getLogger(__name__)


class PrivateFileEmailBackend(BaseEmailBackend):
    def __init__(self, file_path: str | os.PathLike[str] | None = None, fail_silently: bool = False, **kwargs):
        super().__init__(fail_silently=fail_silently, **kwargs)
        self.directory = Path(file_path or settings.EMAIL_FILE_PATH)

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        sent = 0
        for message in email_messages:
            try:
                path = self._write(message)
            except OSError:
                if not self.fail_silently:
                    raise
                logger.exception("Could not write an e-mail to %s", self.directory)
                continue
            logger.info("E-mail to %s kept in %s (readable by this user only)", ", ".join(message.recipients()), path)
            sent += 1
        return sent

    def _write(self, message: EmailMessage) -> Path:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(4)}.eml"
        path = self.directory / name
        # O_EXCL: a new file, never one someone else prepared (or linked) at that name.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(message.message().as_bytes(linesep="\n"))
        return path
