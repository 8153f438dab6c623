"""A delivery through a transform profile: what the engine refuses or cannot do holds that instance for that
destination, never the delivery or the study's other instances."""

import pytest

from apps.routing import transformed
from apps.routing.models import Delivery, DeliveryItem, Destination
from apps.transforms.models import TransformProfile

from ..support.dicom import synthetic_study
from ..support.pipeline import receive_study, run_steps

pytestmark = pytest.mark.django_db


def test_a_file_the_engine_cannot_rewrite_is_held_with_the_error_type_only(
    storage, tmp_path, default_mapping, monkeypatch
):
    profile = TransformProfile.objects.create(
        name="site", operations=[{"op": "prefix", "tag": "AccessionNumber", "value": "N-"}]
    )
    destination = Destination.objects.create(name="site", ae_title="SITE", host="127.0.0.1", port=1, transform=profile)
    from apps.routing.models import RoutingRule

    RoutingRule.objects.create(name="all", priority=1).destinations.add(destination)
    _, paths = synthetic_study(tmp_path / "in", count=2, patient_name="Secret^Name")
    [delivery_id] = run_steps(receive_study(storage, paths), until="route")
    delivery = Delivery.objects.select_related("transform").get(pk=delivery_id)
    items = list(delivery.items.select_related("instance"))
    real = transformed.engine.transform
    calls = []

    def breaks_on_the_first(source, target, profile, secret, **kwargs):
        calls.append(source)
        if len(calls) == 1:
            raise TypeError("Secret^Name in a value the engine could not encode")
        return real(source, target, profile, secret, **kwargs)

    monkeypatch.setattr(transformed.engine, "transform", breaks_on_the_first)

    prepared = transformed.prepare(delivery, items)
    transformed.hold(prepared)
    transformed.clean(prepared)

    assert len(prepared.files) == 1 and len(prepared.held) == 1
    [reason] = prepared.held.values()
    assert reason == "profile site could not rewrite this file (TypeError)"
    assert DeliveryItem.objects.filter(state=DeliveryItem.State.HELD).count() == 1
    assert not (storage / transformed.FOLDER / str(delivery_id)).exists()
