"""Configuration fragments the tests share (YAML, as `importconfig` reads it)."""

# A neuroradiologist on shift around the clock: every neuro study has someone to go to.
ACHEN_ON_SHIFT = """
radiologists:
  - username: achen
    name: A. Chen
    email: achen@example.org
    specialty: neuroradiology
    shifts: [{days: [mon, tue, wed, thu, fri, sat, sun], start: "00:00", end: "23:59", timezone: UTC}]
"""
