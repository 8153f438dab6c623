from django.contrib import admin

from .models import AllowedCaller


@admin.register(AllowedCaller)
class AllowedCallerAdmin(admin.ModelAdmin):
    list_display = ("ae_title", "host", "enabled", "tls_required", "client_ca_file", "description")
    list_filter = ("enabled", "tls_required")
    search_fields = ("ae_title", "host")
