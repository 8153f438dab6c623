from django.apps import AppConfig


class DicomwebConfig(AppConfig):
    name = "apps.dicomweb"
    label = "dicomweb"
