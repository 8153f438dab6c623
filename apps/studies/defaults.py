"""The specialty mapping the router ships with. It is data: installed by a migration, edited in admin."""

DEFAULT_SPECIALTY = "general_radiology"

DEFAULT_SPECIALTY_MAPPING = [
    {"order": 10, "modality": "MG", "body_parts": "", "specialty": "breast_imaging"},
    {"order": 20, "modality": "", "body_parts": "BREAST", "specialty": "breast_imaging"},
    {"order": 30, "modality": "", "body_parts": "HEAD,BRAIN,SPINE,NECK", "specialty": "neuroradiology"},
    {
        "order": 40,
        "modality": "",
        "body_parts": "EXTREMITY,JOINT,BONE,KNEE,SHOULDER,HIP",
        "specialty": "musculoskeletal",
    },
    {"order": 50, "modality": "", "body_parts": "CHEST,HEART,LUNG,CARDIAC", "specialty": "cardiothoracic"},
    {"order": 60, "modality": "", "body_parts": "ABDOMEN,PELVIS", "specialty": "body_imaging"},
]

# Words in the study or requested-procedure description that raise the priority (whole words).
DEFAULT_PRIORITY_KEYWORDS = [
    {"keyword": "STAT", "priority": "STAT"},
    {"keyword": "CODE STROKE", "priority": "STAT"},
    {"keyword": "STROKE ALERT", "priority": "STAT"},
    {"keyword": "TRAUMA", "priority": "STAT"},
    {"keyword": "URGENT", "priority": "URGENT"},
]

# RVU-like weights: starting points for balancing readers by work rather than study count.
DEFAULT_WORKLOAD_WEIGHTS = [
    {"modality": "CR", "body_part": "", "weight": 0.3},
    {"modality": "DX", "body_part": "", "weight": 0.3},
    {"modality": "US", "body_part": "", "weight": 0.6},
    {"modality": "MG", "body_part": "", "weight": 0.7},
    {"modality": "CT", "body_part": "", "weight": 1.0},
    {"modality": "CT", "body_part": "CHEST", "weight": 1.2},
    {"modality": "CT", "body_part": "ABDOMEN", "weight": 1.3},
    {"modality": "MR", "body_part": "", "weight": 1.4},
    {"modality": "MR", "body_part": "BRAIN", "weight": 1.6},
    {"modality": "NM", "body_part": "", "weight": 1.0},
    {"modality": "PT", "body_part": "", "weight": 1.5},
]

HEADER_CHECKS = (
    "required_attributes",
    "one_patient",
    "plausible_study_date",
    "series_modality",
    "same_uid_different_content",
)


def default_qc_checks() -> list[dict]:
    """Every check flags by default; pixel checks carry the starting limits from pixels.DEFAULT_LIMITS."""
    from .pixels import DEFAULT_LIMITS

    rows = [{"name": check, "modality": "*", "policy": "flag"} for check in HEADER_CHECKS]
    for modality, limits in DEFAULT_LIMITS.items():
        for check, (low, high) in limits.items():
            rows.append({"name": check, "modality": modality, "min_value": low, "max_value": high, "policy": "flag"})
    return rows


def install_defaults(get_model) -> None:
    """Fill the empty configuration tables with the shipped defaults (a migration and the tests use it)."""
    tables = {
        "SpecialtyMapping": DEFAULT_SPECIALTY_MAPPING,
        "PriorityKeyword": DEFAULT_PRIORITY_KEYWORDS,
        "WorkloadWeight": DEFAULT_WORKLOAD_WEIGHTS,
        "QcCheck": default_qc_checks(),
    }
    for name, rows in tables.items():
        model = get_model("studies", name)
        if not model.objects.exists():
            model.objects.bulk_create(model(**row) for row in rows)
