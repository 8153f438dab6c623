from django.apps import AppConfig


class PriorsConfig(AppConfig):
    name = "apps.priors"
    label = "priors"
    verbose_name = "prior fetching"
