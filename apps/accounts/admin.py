from django import forms
from django.conf import settings
from django.contrib import admin, messages

from apps.core import clock

from .models import ApiToken
from .services import token_issue


class ApiTokenAddForm(forms.ModelForm):
    days = forms.IntegerField(min_value=1, max_value=3650, help_text="Days until the token expires.")

    class Meta:
        model = ApiToken
        fields = ["user", "name"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["days"].initial = settings.API_TOKEN_DAYS


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens by user, name, creation and expiry. Adding one shows the token once, in a message; deleting one
    revokes it. Nothing else is editable: a token's expiry or owner never changes."""

    list_display = ("name", "user", "created", "expiry", "expired")
    list_filter = ("created", "expiry")
    search_fields = ("name", "user__username")
    list_select_related = ("user",)
    date_hierarchy = "created"

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(boolean=True)
    def expired(self, obj: ApiToken) -> bool:
        return obj.expiry is not None and obj.expiry <= clock.now()

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = ApiTokenAddForm
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request, obj=None):
        return ["user", "name", "days"] if obj is None else ["user", "name", "created", "expiry"]

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else ("user", "name", "created", "expiry")

    def save_form(self, request, form, change):
        # Issued here rather than saved from the form: the service makes the secret and the digest.
        token, raw = token_issue(
            user=form.cleaned_data["user"], name=form.cleaned_data["name"], days=form.cleaned_data["days"]
        )
        self.message_user(
            request,
            f"The token for {token.user} ({token.name}) is {raw} — copy it now: it is not stored and is not "
            "shown again.",
            messages.WARNING,
        )
        return token

    def save_model(self, request, obj, form, change) -> None:
        """Nothing to save: save_form issued the token (and no token is ever changed)."""

    def save_related(self, request, form, formsets, change) -> None:
        """Nothing related: a token is one row."""
