"""A logging filter for the probes, apart from tokios_site/health.py: settings.LOGGING loads it
before the apps are ready, and health.py imports models.

Django logs every 5xx answer as an error on `django.request`, so a load balancer probing /readyz
every few seconds during an outage would write an error line per probe. The 503's body says what
failed, and tokios_site/health.py logs each change of readiness once ("not ready: …", "ready
again"); this filter drops Django's line for that one answer and nothing else.
"""

from __future__ import annotations

import logging


class QuietReadiness(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        request = getattr(record, "request", None)
        return not (getattr(record, "status_code", None) == 503 and getattr(request, "path", None) == "/readyz")
