"""OpenAPI description of the personal-access-token authentication (loaded from ApiConfig.ready)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class PersonalAccessTokenScheme(OpenApiAuthenticationExtension):
    target_class = "api.authentication.PersonalAccessTokenAuthentication"
    name = "personalAccessToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "pat-tokios-…",
            "description": "A personal access token from the Tokens section of your profile page.",
        }
