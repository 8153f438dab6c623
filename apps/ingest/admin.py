from django.contrib import admin

from .models import AllowedCaller


@admin.register(AllowedCaller)
class AllowedCallerAdmin(admin.ModelAdmin):
    list_display = ("ae_title", "host", "enabled", "description")
    list_filter = ("enabled",)
    search_fields = ("ae_title", "host")
