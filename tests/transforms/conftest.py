"""Files for the transform tests: pydicom's shipped instances and a CT carrying the identifying attributes
that Annex E names. No database: these tests call the engine's functions on files."""

import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from ..support.dicom import shipped, synthetic_study

SECRET = b"test-secret-0123456789abcdef"
OTHER_SECRET = b"other-secret-0123456789abcdef"


def item(**attributes) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.fixture
def study(tmp_path) -> tuple[str, list[Path]]:
    """Three instances of one synthetic CT study (tests/support/dicom.py)."""
    return synthetic_study(tmp_path / "study", count=3, patient_name="Doe^Jane")


@pytest.fixture
def identified(tmp_path, study) -> Path:
    """A CT of the synthetic study with the identifying attributes a modality and a RIS write, references
    to another instance of the study, and a private block."""
    _, paths = study
    ds = dcmread(paths[0])
    ds.PatientID = "MRN-1234567"
    ds.PatientBirthDate = "19610214"
    ds.PatientSex = "F"
    ds.PatientAge = "063Y"
    ds.OtherPatientIDs = "OLD-99"
    ds.OtherPatientIDsSequence = Sequence([item(PatientID="MRN-OTHER", IssuerOfPatientID="CITY")])
    ds.PatientAddress = "1 Main Street"
    ds.ReferringPhysicianName = "House^Gregory"
    ds.PerformingPhysicianName = "Wilson^James"
    ds.OperatorsName = "Cuddy^Lisa"
    ds.InstitutionName = "Princeton Plainsboro"
    ds.InstitutionAddress = "Princeton NJ"
    ds.StationName = "CT01"
    ds.DeviceSerialNumber = "SN-778"
    ds.AccessionNumber = "A-20240601-7"
    ds.StudyID = "S-4711"
    ds.StudyDescription = "CT HEAD DOE"
    ds.SeriesDescription = "Axial Doe Jane 5mm"
    ds.StudyDate = "20240601"
    ds.SeriesDate = "20240601"
    ds.AcquisitionDateTime = "20240601101500.123+0100"
    ds.RequestAttributesSequence = Sequence(
        [item(AccessionNumber="A-20240601-7", RequestedProcedureID="RP-1", ScheduledProcedureStepID="SPS-1")]
    )
    ds.ReferencedImageSequence = Sequence(
        [item(ReferencedSOPClassUID=ds.SOPClassUID, ReferencedSOPInstanceUID=dcmread(paths[1]).SOPInstanceUID)]
    )
    block = ds.private_block(0x0009, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "private hint")
    path = paths[0].parent / "identified.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def ct() -> Path:
    return shipped("ct")


def dcmdump_problems(path: Path) -> set[str]:
    """dcmdump's error and warning lines for a file (+E: print what it can even if damaged)."""
    result = subprocess.run(["/usr/bin/dcmdump", "+E", str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return {line for line in lines if line.startswith(("E:", "W:", "F:"))} | (
        {f"exit {result.returncode}"} if result.returncode else set()
    )
