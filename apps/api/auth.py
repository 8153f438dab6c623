"""Token login for API clients (django-rest-knox): HTTP Basic credentials in, a named token out, shown once.
Logging out deletes the token used, or every token of the user."""

from drf_spectacular.utils import extend_schema
from knox import views as knox_views
from rest_framework import serializers
from rest_framework.authentication import BasicAuthentication

from apps.accounts.services import token_issue

DEFAULT_TOKEN_NAME = "API login"


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

    authentication_classes = [BasicAuthentication]

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
