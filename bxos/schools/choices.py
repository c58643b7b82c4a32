"""Code lists of the school-data core. Codes are stored; labels are shown."""

from django.db import models


class SchoolType(models.TextChoices):
    ELEMENTARY = "elementary", "Elementary"
    MIDDLE = "middle", "Middle"
    HIGH = "high", "High"
    OTHER = "other", "Other"


class GradeLevel(models.TextChoices):
    # OneRoster / CEDS grade codes
    PK = "PK", "Pre-kindergarten"
    KG = "KG", "Kindergarten"
    G01 = "01", "Grade 1"
    G02 = "02", "Grade 2"
    G03 = "03", "Grade 3"
    G04 = "04", "Grade 4"
    G05 = "05", "Grade 5"
    G06 = "06", "Grade 6"
    G07 = "07", "Grade 7"
    G08 = "08", "Grade 8"
    G09 = "09", "Grade 9"
    G10 = "10", "Grade 10"
    G11 = "11", "Grade 11"
    G12 = "12", "Grade 12"


class SessionType(models.TextChoices):
    # OneRoster academicSession types
    SCHOOL_YEAR = "schoolYear", "School year"
    SEMESTER = "semester", "Semester"
    TERM = "term", "Term"
    GRADING_PERIOD = "gradingPeriod", "Grading period"


class RaceEthnicity(models.TextChoices):
    # EDFacts race/ethnicity codes (seven categories)
    HI7 = "HI7", "Hispanic/Latino of any race"
    AM7 = "AM7", "American Indian or Alaska Native"
    AS7 = "AS7", "Asian"
    BL7 = "BL7", "Black or African American"
    PI7 = "PI7", "Native Hawaiian or Other Pacific Islander"
    WH7 = "WH7", "White"
    MU7 = "MU7", "Two or more races"


class Sex(models.TextChoices):
    FEMALE = "F", "Female"
    MALE = "M", "Male"
    NONBINARY = "X", "Non-binary"


class GuardianRelationship(models.TextChoices):
    MOTHER = "mother", "Mother"
    FATHER = "father", "Father"
    GUARDIAN = "guardian", "Legal guardian"
    GRANDPARENT = "grandparent", "Grandparent"
    FOSTER = "foster", "Foster parent"
    OTHER = "other", "Other"


class StaffPosition(models.TextChoices):
    DISTRICT_ADMIN = "district_admin", "District administrator"
    PRINCIPAL = "principal", "Principal"
    ASSISTANT_PRINCIPAL = "assistant_principal", "Assistant principal"
    COUNSELOR = "counselor", "Counselor"
    TEACHER = "teacher", "Teacher"
    SUPPORT = "support", "Support staff"


class DailyAttendanceStatus(models.TextChoices):
    PRESENT = "present", "Present"
    ABSENT_EXCUSED = "excused", "Excused absence"
    ABSENT_UNEXCUSED = "unexcused", "Unexcused absence"
    TARDY = "tardy", "Tardy"
    EARLY_DEPARTURE = "early_departure", "Early departure"


class ExitReason(models.TextChoices):
    TRANSFER = "transfer", "Transferred"
    GRADUATED = "graduated", "Graduated"
    PROMOTED = "promoted", "Promoted to next school"
    DROPPED_OUT = "dropped_out", "Dropped out"
    OTHER = "other", "Other"


def values_sql(choices: type[models.TextChoices]) -> list[str]:
    return [c for c in choices.values]
