"""Token login for API clients (django-rest-knox): HTTP Basic credentials in, a named token out, shown once.
Logging out deletes the token used, or every token of the user. Credentials locked out by django-axes (too
many failures for this username or from this address) answer 429 with Retry-After, not 401."""

from axes.helpers import get_cool_off
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import extend_schema
from knox import views as knox_views
from rest_framework import serializers
from rest_framework.authentication import BasicAuthentication
from rest_framework.exceptions import AuthenticationFailed, Throttled

from apps.accounts.services import token_issue

DEFAULT_TOKEN_NAME = "API login"


class LockoutAwareBasicAuthentication(BasicAuthentication):
    def authenticate_credentials(self, userid, password, request=None):
        try:
            return super().authenticate_credentials(userid, password, request)
        except AuthenticationFailed:
            # axes marks the request it refused, or the one whose failure reached the limit.
            if getattr(request, "axes_locked_out", False):
                cool_off = get_cool_off(request)
                raise Throttled(
                    wait=cool_off.total_seconds() if cool_off else None, detail="Too many failed login attempts."
                ) from None
            raise


class LockoutAwareBasicScheme(OpenApiAuthenticationExtension):
    target_class = LockoutAwareBasicAuthentication
    name = "basicAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "basic"}


class TokenLoginSerializer(serializers.Serializer):
    name = serializers.CharField(
        max_length=100, required=False, default=DEFAULT_TOKEN_NAME, help_text="What will use the token."
    )


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="The token, shown this once: send it as 'Authorization: Token ...'.")
    name = serializers.CharField()
    expiry = serializers.DateTimeField()


@extend_schema(request=TokenLoginSerializer, responses={200: TokenSerializer})
class LoginView(knox_views.LoginView):
    """A new token for the user of these HTTP Basic credentials, named as asked (default 'API login') and
    expiring after API_TOKEN_DAYS. The token is in this answer only."""

    authentication_classes = [LockoutAwareBasicAuthentication]

    def create_token(self):
        params = TokenLoginSerializer(data=self.request.data)
        params.is_valid(raise_exception=True)
        return token_issue(user=self.request.user, name=params.validated_data["name"])

    def get_post_response_data(self, request, token, instance):
        return {"token": token, "name": instance.name, "expiry": self.format_expiry_datetime(instance.expiry)}


@extend_schema(request=None, responses={204: None})
class LogoutView(knox_views.LogoutView):
    """Revoke the token this request carries."""


@extend_schema(request=None, responses={204: None})
class LogoutAllView(knox_views.LogoutAllView):
    """Revoke every token of this user."""
