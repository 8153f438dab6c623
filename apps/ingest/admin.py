from django.contrib import admin

from apps.configuration.versioned import VersionedAdmin

from .models import AllowedCaller


@admin.register(AllowedCaller)
class AllowedCallerAdmin(VersionedAdmin, admin.ModelAdmin):
    list_display = ("ae_title", "host", "enabled", "may_query", "may_retrieve", "tls_required", "description")
    list_filter = ("enabled", "may_query", "may_retrieve", "tls_required")
    search_fields = ("ae_title", "host")
