from django.apps import AppConfig


class TransformsConfig(AppConfig):
    name = "apps.transforms"
    label = "transforms"
