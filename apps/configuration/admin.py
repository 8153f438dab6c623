"""Configuration versions in the admin: the list (who, when, from where, what changed), each version's
document, *Restore* (a rollback, itself a new version), and *Review a document*: the diff of a pasted or
uploaded document against today's configuration, then *Apply*."""

from django import forms
from django.contrib import admin, messages
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path

from apps.audit.services import client_address

from .models import ConfigVersion
from .services import ConfigError
from .versions import config_apply, config_preview, config_restore


class ReviewForm(forms.Form):
    document = forms.CharField(widget=forms.Textarea(attrs={"rows": 24, "cols": 100}), required=False)
    upload = forms.FileField(required=False, help_text="Or a YAML file (exportconfig's format).")
    prune = forms.BooleanField(
        required=False, help_text="Also remove entries of the document's sections that it does not name."
    )

    def text(self) -> str:
        if upload := self.cleaned_data.get("upload"):
            return upload.read().decode("utf-8", errors="replace")
        return self.cleaned_data.get("document") or ""


@admin.register(ConfigVersion)
class ConfigVersionAdmin(admin.ModelAdmin):
    list_display = ("id", "created_at", "author", "source", "restored_from", "changes")
    list_filter = ("source",)
    search_fields = ("author", "summary")
    readonly_fields = ("id", "created_at", "author", "user", "source", "restored_from", "summary", "document")
    fields = readonly_fields
    actions = ["restore"]

    @admin.display(description="what changed")
    def changes(self, version: ConfigVersion) -> str:
        return version.summary.rsplit("\n", 1)[-1]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # read-only; restoring is an action

    @admin.action(description="Restore the selected version (a rollback, recorded as a new version)")
    def restore(self, request, queryset) -> None:
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one version to restore.", messages.ERROR)
            return
        number = queryset.get().pk
        try:
            applied = config_restore(number, user=request.user, address=client_address(request))
        except ConfigError as exc:
            self.message_user(request, f"Version {number} was not restored: {exc}", messages.ERROR)
            return
        if applied.version is None:
            self.message_user(request, f"The configuration already is version {number}: nothing changed.")
        else:
            self.message_user(
                request, f"Version {number} restored as version {applied.version.pk}: {applied.diff.summary()}."
            )

    def get_urls(self):
        review = path("review/", self.admin_site.admin_view(self.review_view), name="configuration_review")
        return [review, *super().get_urls()]

    def review_view(self, request):
        """Paste or upload a document: see what it would change (nothing written), then apply it."""
        if not request.user.is_superuser:  # a whole document touches every part of the configuration
            return redirect("admin:index")
        form = ReviewForm(request.POST or None, request.FILES or None)
        diff = report = None
        if request.method == "POST" and form.is_valid():
            text, prune = form.text(), form.cleaned_data["prune"]
            try:
                if "apply" in request.POST:
                    applied = config_apply(text, source=ConfigVersion.Source.ADMIN, user=request.user, prune=prune)
                    if applied.version is None:
                        self.message_user(request, "The document changes nothing: no version was made.")
                    else:
                        self.message_user(
                            request, f"Applied as version {applied.version.pk}: {applied.diff.summary()}."
                        )
                    return redirect("admin:configuration_configversion_changelist")
                report, diff = config_preview(text, prune=prune)
                form = ReviewForm(initial={"document": text, "prune": prune})  # an upload, kept for Apply
            except ConfigError as exc:
                form.add_error(None, f"{exc} (nothing was written)")
        context = {
            **self.admin_site.each_context(request),
            "title": "Review a configuration document",
            "form": form,
            "diff": diff,
            "report": report,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/configuration/review.html", context)
