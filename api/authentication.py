"""`Authorization: Bearer pat-tokios-…` for automation; the session covers the browser.

A token acts in its one organisation only, at the lower of its role and its user's current role
there (accounts.tenancy.acting_membership, which the views call); once the user has left that
organisation, the token no longer authenticates."""

from __future__ import annotations

from rest_framework import authentication, exceptions

from accounts.actions import touch_personal_access_token
from accounts.models import PAT_PREFIX, PersonalAccessToken
from accounts.secrets import hash_secret
from accounts.tenancy import token_membership


class PersonalAccessTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        scheme, _sep, secret = header.partition(" ")
        if scheme.lower() != self.keyword.lower():
            return None
        secret = secret.strip()
        if not secret.startswith(PAT_PREFIX):
            raise exceptions.AuthenticationFailed("Expected a personal access token (pat-tokios-…).")
        # The lookup is by SHA-256 of a high-entropy secret: an index probe on a hash reveals nothing
        # a timing attacker could use, as with API keys.
        token = PersonalAccessToken.objects.select_related("user", "org").filter(token_hash=hash_secret(secret)).first()
        if token is None or not token.is_usable or not token.user.is_active:
            raise exceptions.AuthenticationFailed("Unknown, revoked or expired personal access token.")
        if token_membership(token) is None:
            raise exceptions.AuthenticationFailed(
                "This token's user is no longer a member of its organisation; the token no longer works."
            )
        touch_personal_access_token(token)
        return token.user, token

    def authenticate_header(self, request) -> str:
        return f'{self.keyword} realm="api"'
