"""Signals accounts sends to the layers above it, which it never imports."""

from django.dispatch import Signal

# Sent when a key's secret stops being accepted other than by a save of the key that still names
# it: a second rotation drops the secret the first one kept in its grace period. Arguments:
# `key_hashes` (the SHA-256 of each such secret). The gateway's access cache forgets them.
api_key_secrets_retired = Signal()
