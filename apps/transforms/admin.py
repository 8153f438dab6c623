"""Transform profiles in admin, with a preview on a stored instance (nothing is sent)."""

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import path

from apps.audit.services import audit_action
from apps.configuration.versioned import VersionedAdmin

from . import services
from .models import PseudonymEntry, TransformProfile


class PreviewForm(forms.Form):
    sop_instance_uid = forms.CharField(max_length=64, label="SOP Instance UID of a stored instance")


@admin.register(TransformProfile)
class TransformProfileAdmin(VersionedAdmin, admin.ModelAdmin):
    list_display = ("name", "deidentify", "use_pseudonym_table", "secret", "description", "updated_at")
    search_fields = ("name", "description")
    change_form_template = "admin/transforms/transformprofile_change_form.html"

    def get_urls(self):
        preview = self.admin_site.admin_view(self.preview_view)
        return [path("<int:profile_id>/preview/", preview, name="transforms_preview"), *super().get_urls()]

    def preview_view(self, request, profile_id: int):
        """Apply the profile to a stored instance and show every changed attribute, before and after."""
        profile = TransformProfile.objects.get(pk=profile_id)
        if not self.has_change_permission(request, profile):
            raise PermissionDenied  # a preview shows an instance's identifying values
        form = PreviewForm(request.POST or None)
        outcome = None
        if request.method == "POST" and form.is_valid():
            uid = form.cleaned_data["sop_instance_uid"]
            outcome = services.profile_preview(profile=profile, sop_instance_uid=uid)
            audit_action(
                request=request,
                action="transforms.preview",
                study_instance_uid="",
                detail=f"previewed profile {profile.name} on instance {uid.strip()[:64]}",
            )
        context = {
            **self.admin_site.each_context(request),
            "title": f"Preview of transform profile {profile.name}",
            "profile": profile,
            "form": form,
            "outcome": outcome,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/transforms/preview.html", context)


@admin.register(PseudonymEntry)
class PseudonymEntryAdmin(admin.ModelAdmin):
    """A profile's pseudonym table (import: manage.py importpseudonyms). Searching by patient ID shows one row;
    the list shows pseudonyms only."""

    list_display = ("profile", "pseudonym")
    list_filter = ("profile",)
    search_fields = ("=patient_id", "=pseudonym")
