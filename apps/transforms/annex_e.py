"""The data of DICOM PS3.15 Annex E: the Basic Application Level Confidentiality Profile's action per attribute
(Table E.1-1), the options we offer and the attributes each option changes, and the CID 7050 codes.

The Basic Profile column comes from dicom-anonymizer's transcription of Table E.1-1 (edition 2026c, pinned in
pyproject.toml): a maintained copy of the standard beats one of our own. Its application code is not used (it
remaps UIDs randomly per process and sets dates to 00010101; docs/transforms-library-choice.md). The option
columns are not in any maintained library, so they are transcribed here from the same table, by keyword.
"""

# dicom-anonymizer keeps one list per Basic Profile action; the module name is the standard's edition.
from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as _edition
from pydicom.datadict import tag_for_keyword
from pydicom.tag import Tag

EDITION = "2026c"

# Actions of Table E.1-1: D dummy, Z zero length, X remove, K keep, C clean, U remap UID; "X/Z" and the like
# depend on the attribute's type in its IOD. We add S (shift dates by the patient's offset).
_LISTS = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}


def _basic_profile() -> tuple[dict[int, str], tuple[tuple[int, int, int, int, str], ...]]:
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for name, action in _LISTS.items():
        for entry in getattr(_edition, name):
            if len(entry) == 2:
                exact[Tag(entry[0], entry[1])] = action
            else:  # repeating groups such as (50xx,xxxx) curve data: (group, element, group mask, element mask)
                masked.append((*entry, action))
    return exact, tuple(masked)


BASIC_PROFILE, BASIC_PROFILE_MASKED = _basic_profile()


def basic_action(tag: int) -> str | None:
    """The Basic Profile's action for a public attribute, or None when the table does not list it (kept)."""
    action = BASIC_PROFILE.get(tag)
    if action is not None:
        return action
    group, element = tag >> 16, tag & 0xFFFF
    for g, e, gmask, emask, masked_action in BASIC_PROFILE_MASKED:
        if group & gmask == g & gmask and element & emask == e & emask:
            return masked_action
    return None


# The options a profile may switch on, named after PS3.15 E.3. Retain Safe Private, Clean Pixel Data, Clean
# Recognizable Visual Features, Clean Graphics and Clean Structured Content are not offered: we cannot carry
# them out (no safe-private table, no pixel processing), and claiming them in the output would be false.
RETAIN_UIDS = "retain_uids"
RETAIN_DEVICE_IDENTITY = "retain_device_identity"
RETAIN_INSTITUTION_IDENTITY = "retain_institution_identity"
RETAIN_PATIENT_CHARACTERISTICS = "retain_patient_characteristics"
RETAIN_LONGITUDINAL_FULL_DATES = "retain_longitudinal_full_dates"
RETAIN_LONGITUDINAL_MODIFIED_DATES = "retain_longitudinal_modified_dates"
CLEAN_DESCRIPTORS = "clean_descriptors"

# CID 7050 De-identification Method: (code value, code meaning). 113100 is the Basic Profile itself.
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
OPTION_CODES: dict[str, tuple[str, str]] = {
    CLEAN_DESCRIPTORS: ("113105", "Clean Descriptors Option"),
    RETAIN_LONGITUDINAL_FULL_DATES: ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    RETAIN_LONGITUDINAL_MODIFIED_DATES: ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    RETAIN_PATIENT_CHARACTERISTICS: ("113108", "Retain Patient Characteristics Option"),
    RETAIN_DEVICE_IDENTITY: ("113109", "Retain Device Identity Option"),
    RETAIN_UIDS: ("113110", "Retain UIDs Option"),
    RETAIN_INSTITUTION_IDENTITY: ("113112", "Retain Institution Identity Option"),
}
OPTIONS = frozenset(OPTION_CODES)


def _tags(*keywords: str) -> frozenset[int]:
    tags = {keyword: tag_for_keyword(keyword) for keyword in keywords}
    unknown = [keyword for keyword, tag in tags.items() if tag is None]
    if unknown:  # a pydicom upgrade that renamed a keyword must not silently shrink an option
        raise ImportError(f"keywords unknown to pydicom's dictionary: {unknown}")
    return frozenset(Tag(tag) for tag in tags.values())


# Table E.1-1, column "Rtn. Dev. Id. Opt.": K keeps; C (AE titles and the like) is cleaned.
DEVICE_KEEP = _tags(
    "CalibrationDate", "CalibrationDateTime", "CalibrationTime", "CassetteID", "DateOfInstallation",
    "DateOfLastCalibration", "DateOfLastDetectorCalibration", "DateOfManufacture", "DateTimeOfLastCalibration",
    "DetectorID", "DeviceDescription", "DeviceLabel", "DeviceSerialNumber", "DeviceUID", "GantryID",
    "GeneratorID", "LensMake", "LensModel", "LensSerialNumber", "LensSpecification",
    "ManufacturerDeviceClassUID", "ManufacturerDeviceIdentifier", "ModifyingDeviceID", "ModifyingSystem",
    "PerformedStationGeographicLocationCodeSequence", "PerformedStationName", "PerformedStationNameCodeSequence",
    "PlateID", "ScheduledProcedureStepLocation", "ScheduledStationGeographicLocationCodeSequence",
    "ScheduledStationName", "ScheduledStationNameCodeSequence", "ScheduledStudyLocation", "SourceManufacturer",
    "SourceSerialNumber", "StationName", "TimeOfLastCalibration", "TimeOfLastDetectorCalibration",
    "TransducerIdentificationSequence", "TreatmentMachineName", "UDISequence", "UniqueDeviceIdentifier",
    "XRayDetectorID", "XRayDetectorLabel", "XRaySourceID", "BeamHoldTransitionDateTime",
)  # fmt: skip
DEVICE_CLEAN = _tags(
    "DestinationAE", "NetworkID", "Originator", "PerformedStationAETitle", "ReceivingAE", "RequestingAE",
    "RetrieveAETitle", "ScheduledStationAETitle", "ScheduledStudyLocationAETitle", "SelectorAEValue",
    "StationAETitle",
)  # fmt: skip
# Column "Rtn. Inst. Id. Opt.": all K.
INSTITUTION_KEEP = _tags(
    "ClinicalTrialCoordinatingCenterName", "ClinicalTrialProtocolEthicsCommitteeName", "ClinicalTrialSiteID",
    "ClinicalTrialSiteName", "InstitutionAddress", "InstitutionalDepartmentName",
    "InstitutionalDepartmentTypeCodeSequence", "InstitutionCodeSequence", "InstitutionName",
    "SourceOfPreviousValues",
)  # fmt: skip
# Column "Rtn. Pat. Chars. Opt.".
PATIENT_KEEP = _tags(
    "EthnicGroup", "PatientAge", "PatientSex", "PatientSexNeutered", "PatientSize", "PatientWeight",
    "PregnancyStatus", "SelectorASValue", "SmokingStatus",
)  # fmt: skip
PATIENT_CLEAN = _tags("Allergies", "PatientState", "PreMedication", "SpecialNeeds")
# Column "Clean Desc. Opt.": free text and coded reasons that may name people, places or dates.
DESCRIPTORS = _tags(
    "AcquisitionComments", "AcquisitionDeviceProcessingDescription", "AcquisitionFieldOfViewLabel",
    "AcquisitionProtocolDescription", "AdditionalPatientHistory", "AdmittingDiagnosesCodeSequence",
    "AdmittingDiagnosesDescription", "Allergies", "AnnotationGroupDescription", "AnnotationGroupLabel",
    "BeamDescription", "BolusDescription", "ClinicalTrialSeriesDescription", "ClinicalTrialTimePointDescription",
    "CommentsOnRadiationDose", "CommentsOnThePerformedProcedureStep", "CompensatorDescription",
    "ConceptualVolumeCombinationDescription", "ConceptualVolumeDescription", "ContainerDescription",
    "ContrastBolusAgent", "ContributionDescription", "DecompositionDescription", "DerivationDescription",
    "DeviceSettingDescription", "DischargeDiagnosisDescription", "DisplacementReferenceLabel",
    "DoseReferenceDescription", "EntityDescription", "EntityLabel", "EntityLongLabel", "EntityName",
    "EquipmentFrameOfReferenceDescription", "FilterLookupTableDescription", "FixationDeviceDescription",
    "FractionationNotes", "FractionGroupDescription", "FrameComments", "IdentifyingComments", "ImageComments",
    "ImagingServiceRequestComments", "Impressions", "InterlockDescription", "InterlockOriginDescription",
    "InterpretationDiagnosisDescription", "InterpretationText", "LabelText", "LongDeviceDescription",
    "MakerNote", "MedicalAlerts", "MultienergyAcquisitionDescription", "Occupation", "PatientComments",
    "PatientSetupPhotoDescription", "PatientState", "PatientTreatmentPreparationMethodDescription",
    "PatientTreatmentPreparationProcedureParameterDescription", "PerformedProcedureStepDescription",
    "PositionAcquisitionTemplateDescription", "PositionAcquisitionTemplateName", "PrescriptionDescription",
    "PrescriptionNotes", "PrescriptionNotesSequence", "PriorTreatmentDoseDescription", "ProtocolName",
    "PyramidDescription", "PyramidLabel", "RadiationDoseIdentificationLabel",
    "RadiationDoseInVivoMeasurementLabel", "RadiationGenerationModeDescription", "RadiationGenerationModeLabel",
    "ReasonForOmissionDescription", "ReasonForRequestedProcedureCodeSequence", "ReasonForStudy",
    "ReasonForSuperseding", "ReasonForTheAttributeModification", "ReasonForTheImagingServiceRequest",
    "ReasonForTheRequestedProcedure", "ReasonForVisit", "ReasonForVisitCodeSequence", "RequestAttributesSequence",
    "RequestedContrastAgent", "RequestedProcedureComments", "RequestedProcedureDescription",
    "RequestedSeriesDescription", "RespiratoryMotionCompensationTechniqueDescription", "ResultsComments",
    "ROIDescription", "ROIGenerationDescription", "ROIName", "ROIObservationDescription", "ROIObservationLabel",
    "RTPhysicianIntentNarrative", "RTPlanDescription", "RTPlanLabel", "RTPlanName", "RTPrescriptionLabel",
    "RTToleranceSetLabel", "RTTreatmentApproachLabel", "ScheduledProcedureStepDescription", "SelectorLOValue",
    "SelectorLTValue", "SelectorSHValue", "SelectorSTValue", "SelectorUTValue", "SeriesDescription",
    "ServiceEpisodeDescription", "SetupTechniqueDescription", "ShieldingDeviceDescription",
    "SpecimenDetailedDescription", "SpecimenShortDescription", "StructureSetDescription", "StructureSetLabel",
    "StructureSetName", "StudyComments", "StudyDescription", "TreatmentPositionGroupLabel", "TreatmentSite",
    "TreatmentSites", "TreatmentTechniqueNotes", "TreatmentToleranceViolationDescription", "UserContentLabel",
    "UserContentLongLabel", "VisitComments", "WaveformFilterDescription",
)  # fmt: skip
# Column "Rtn. UIDs Opt." keeps every U attribute and these sequences of references.
UID_SEQUENCES = _tags(
    "ReferencedImageSequence", "SourceImageSequence", "ReferencedPatientSequence",
    "ReferencedPerformedProcedureStepSequence", "ReferencedStudySequence",
)  # fmt: skip
# The longitudinal options cover the table's dates and times except the patient's birth date and time (no
# option keeps them) and GPS time stamps; the Timezone Offset From UTC goes with them.
DATES_NOT_LONGITUDINAL = _tags("PatientBirthDate", "PatientBirthTime", "GPSTimeStamp")
TIMEZONE = _tags("TimezoneOffsetFromUTC")

# Attributes that name the patient or the request: they feed the descriptor cleaner (clean_descriptors).
IDENTIFYING_TEXT = (
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthName",
    "PatientMotherBirthName", "PatientBirthDate", "PatientAddress", "AccessionNumber", "StudyID",
    "ReferringPhysicianName", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "OperatorsName",
    "RequestingPhysician", "PhysiciansOfRecord", "MedicalRecordLocator", "PatientTelephoneNumbers",
)  # fmt: skip
INSTITUTION_TEXT = ("InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName")

# SOP classes whose pixels commonly carry burned-in text: the Secondary Capture family and ultrasound.
BURNED_IN_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
    "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image Storage",
    "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame Image Storage (Retired)",
}
