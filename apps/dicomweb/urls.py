from django.urls import path

from . import views

# PS3.18 10.5: the Studies Store Transaction, with and without the study as the target resource.
urlpatterns = [
    path("studies", views.StoreInstancesView.as_view(), name="stow-studies"),
    path("studies/<str:study_instance_uid>", views.StoreInstancesView.as_view(), name="stow-study"),
]
