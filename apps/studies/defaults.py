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
