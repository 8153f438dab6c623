"""Per-destination transforms: tag coercion and PS3.15 Annex E de-identification of one instance, as pure
functions over files (no models, no Celery). The public interface is `apps.transforms.engine`."""
