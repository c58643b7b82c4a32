"""Demo data: two districts living through the fall of school year 2026-27.

``manage.py seed_demo`` calls :func:`seed_demo`. It builds "lincoln" (an elementary, a middle and
a high school, about 1,500 students by default) and "riverside" (one small K-12 school, about 60
students, to show tenancy), with rosters, schedules, daily attendance up to 2026-11-20, first
quarter grades, about 10,000 referrals with SWIS-like distributions, support requests with their
workflow history, interventions, and one demo login per role (:data:`DEMO_LOGINS`).

Why it is written the way it is:

- Volume goes through PostgreSQL COPY with ids reserved from each table's own sequence, so a
  100,000-student district (6 million attendance rows) loads in minutes with bounded memory.
  Rows are produced per chunk of students and streamed; each COPY batch gets one audit entry
  (``audit_bulk``). Rows that matter one by one (districts, schools, sessions, logins, object
  permissions, a few live referrals and requests) go through the services, so the audit log and
  the event stream show real per-object entries too.
- Every random choice comes from one ``random.Random`` per district seeded from ``--seed`` and
  the district code, and every database read that feeds a choice is ordered, so a seed always
  gives the same people, schedules and referrals (ids and timestamps of the run aside).
- Each district is written in one transaction: a failure leaves nothing half-written, and with
  ``reset`` the old data comes back if the new one fails.
"""

from __future__ import annotations

import itertools
import math
import random
import sys
import time as clock
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from auditlog.models import LogEntry
from django.contrib.auth.hashers import make_password
from django.db import DatabaseError, connection, models, transaction
from tqdm import tqdm

from bxos.behavior import choices as bchoices
from bxos.behavior import services as behavior_services
from bxos.behavior.defaults import code_for
from bxos.behavior.models import (
    BehaviorSupportRequest,
    BsrTransition,
    Descriptor,
    Incident,
    IncidentAction,
    IncidentParticipant,
    Intervention,
)
from bxos.common.audit import acting_as, audit_bulk
from bxos.common.db import tracked_models
from bxos.common.models import User
from bxos.common.services import model_create
from bxos.schools import services as school_services
from bxos.schools.choices import SchoolType, SessionType, StaffPosition
from bxos.schools.models import (
    AcademicSession,
    DailyAttendance,
    District,
    Enrollment,
    Grade,
    Guardian,
    PeriodAttendance,
    School,
    SchoolUserObjectPermission,
    Section,
    SectionEnrollment,
    SectionUserObjectPermission,
    Staff,
    Student,
    StudentDemographic,
    StudentGuardian,
    StudentUserObjectPermission,
)

Cat = bchoices.DescriptorCategory

DEFAULT_STUDENTS = 1500
MIN_STUDENTS = 30  # a class in every grade band of the three schools
DEFAULT_SEED = 42
DEMO_PASSWORD = "bxos-demo-2026"
DEMO_DISTRICTS = ("lincoln", "riverside")
SOURCE_SYSTEM = "seed_demo"
AUDIT_NOTE = "seed_demo"

# (username, what it shows), printed by seed_demo and by `make run`.
DEMO_LOGINS: list[tuple[str, str]] = [
    ("admin", "platform superuser"),
    ("district.admin", "Lincoln USD: district admin, every school"),
    ("school.admin", "Lincoln USD: principal of Lincoln High School"),
    ("counselor", "Lincoln USD: Lincoln Middle School counselor, with a caseload"),
    ("teacher", "Lincoln USD: Lincoln High School teacher, own sections"),
    ("riverside.admin", "Riverside SD: district admin (tenancy: sees no Lincoln data)"),
]

# Students per chunk of the streaming phase: bounds memory (about 100 rows per student).
CHUNK_STUDENTS = 5000
# Largest COPY batch for the roster tables; each batch is one audit entry.
COPY_BATCH = 100_000
# Id span per DELETE statement on reset: bounded statements, one audit entry each.
DELETE_SPAN = 200_000

# --- the school calendar ------------------------------------------------------------------

YEAR_START = date(2026, 8, 24)
YEAR_END = date(2027, 6, 11)
DATA_END = date(2026, 11, 20)  # attendance and referrals are recorded up to this day
DEMOGRAPHICS_FROM = date(2026, 7, 1)  # the state reporting year starts on July 1
ROSTER_SYNCED = (date(2026, 8, 17), time(8, 0))  # when rosters "arrived" from the SIS
Q1_POSTED = (date(2026, 11, 6), time(15, 30))

HOLIDAYS: dict[date, str] = {
    date(2026, 9, 7): "Labor Day",
    date(2026, 10, 9): "Statewide in-service day",
    date(2026, 11, 11): "Veterans Day",
    **{date(2026, 11, d): "Thanksgiving break" for d in (25, 26, 27)},
    **{date(2026, 12, 21) + timedelta(days=i): "Winter break" for i in range(12)},
    date(2027, 1, 18): "Martin Luther King Jr. Day",
    date(2027, 2, 15): "Presidents' Day",
    **{date(2027, 3, 22) + timedelta(days=i): "Spring break" for i in range(5)},
    date(2027, 5, 31): "Memorial Day",
}

# (key, name, type, parent key, start, end)
SESSIONS = [
    ("year", "2026-27", SessionType.SCHOOL_YEAR, None, YEAR_START, YEAR_END),
    ("fall", "Fall Semester 2026", SessionType.SEMESTER, "year", YEAR_START, date(2027, 1, 22)),
    ("spring", "Spring Semester 2027", SessionType.SEMESTER, "year", date(2027, 1, 25), YEAR_END),
    ("q1", "Quarter 1", SessionType.GRADING_PERIOD, "fall", YEAR_START, date(2026, 10, 30)),
    ("q2", "Quarter 2", SessionType.GRADING_PERIOD, "fall", date(2026, 11, 2), date(2027, 1, 22)),
    ("q3", "Quarter 3", SessionType.GRADING_PERIOD, "spring", date(2027, 1, 25), date(2027, 4, 2)),
    ("q4", "Quarter 4", SessionType.GRADING_PERIOD, "spring", date(2027, 4, 5), YEAR_END),
]


def school_days(start: date, end: date) -> list[date]:
    """Monday to Friday from ``start`` to ``end`` inclusive, holidays skipped."""
    days, day = [], start
    while day <= end:
        if day.weekday() < 5 and day not in HOLIDAYS:
            days.append(day)
        day += timedelta(days=1)
    return days


# --- the districts ----------------------------------------------------------------------------

GRADES = ("KG", "01", "02", "03", "04", "05", "06", "07", "08", "09", "10", "11", "12")
ELEMENTARY, MIDDLE, HIGH = 0, 1, 2


def stage_of(grade: str) -> int:
    index = GRADES.index(grade)
    return ELEMENTARY if index <= 5 else MIDDLE if index <= 8 else HIGH


@dataclass(frozen=True)
class SchoolPlan:
    code: str
    name: str
    school_type: str
    grades: tuple[str, ...]


@dataclass(frozen=True)
class DistrictPlan:
    """What to build for one district; sizes follow ``students``."""

    code: str
    name: str
    state_code: str
    time_zone: str
    domain: str
    area_code: str
    students: int
    schools: tuple[SchoolPlan, ...]
    referrals_per_student: float
    student_number_start: int
    state_id_start: int
    # username -> how to find the staff member: (position, school code or "", department)
    logins: tuple[tuple[str, str, str, str], ...] = ()
    caseload: int = 0


def lincoln_plan(students: int = DEFAULT_STUDENTS) -> DistrictPlan:
    return DistrictPlan(
        code="lincoln",
        name="Lincoln Unified School District",
        state_code="OR",
        time_zone="America/Los_Angeles",
        domain="lincoln.example.org",
        area_code="503",
        students=students,
        schools=(
            SchoolPlan("CPES", "Cedar Park Elementary School", SchoolType.ELEMENTARY, GRADES[:6]),
            SchoolPlan("LMS", "Lincoln Middle School", SchoolType.MIDDLE, GRADES[6:9]),
            SchoolPlan("LHS", "Lincoln High School", SchoolType.HIGH, GRADES[9:]),
        ),
        # About 10,000 referrals for 1,500 students over the fall, minors included.
        referrals_per_student=6.67,
        student_number_start=200001,
        state_id_start=4100200001,
        logins=(
            ("district.admin", StaffPosition.DISTRICT_ADMIN, "", ""),
            ("school.admin", StaffPosition.PRINCIPAL, "LHS", ""),
            ("counselor", StaffPosition.COUNSELOR, "LMS", ""),
            ("teacher", StaffPosition.TEACHER, "LHS", "ELA"),
        ),
        caseload=25,
    )


def riverside_plan() -> DistrictPlan:
    return DistrictPlan(
        code="riverside",
        name="Riverside School District",
        state_code="OR",
        time_zone="America/Los_Angeles",
        domain="riverside.example.org",
        area_code="541",
        students=60,
        schools=(SchoolPlan("RCS", "Riverside Community School", SchoolType.OTHER, GRADES),),
        referrals_per_student=3.0,
        student_number_start=900001,
        state_id_start=4100900001,
        logins=(("riverside.admin", StaffPosition.DISTRICT_ADMIN, "", ""),),
    )


# --- names (a built-in list: no dependency, stable across versions) --------------------------


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


FEMALE_NAMES = _words(
    "Olivia Emma Charlotte Amelia Sophia Mia Isabella Ava Evelyn Luna Harper Camila Sofia "
    "Scarlett Elizabeth Eleanor Emily Chloe Mila Violet Penelope Gianna Aria Abigail Ella Avery "
    "Hazel Nora Layla Lily Aurora Nova Ellie Madison Grace Isla Willow Zoe Riley Stella Valentina "
    "Naomi Maya Leah Lucia Ximena Paisley Elena Aaliyah Kinsley Natalia Ariana Ruby Daniela "
    "Valeria Hannah Alice Gabriella Sadie Maria Jasmine Mariana Priya Mei Yuna Ananya Fatima "
    "Amara Imani Keira Sienna Lucy Iris Josephine Clara Adeline Genesis Rosalie Anaya Kiara"
)
MALE_NAMES = _words(
    "Liam Noah Oliver James Elijah Mateo Theodore Henry Lucas William Benjamin Levi Sebastian "
    "Jack Ezra Michael Daniel Leo Owen Samuel Hudson Alexander Asher Luca Ethan John David "
    "Jackson Joseph Mason Luke Matthew Julian Dylan Elias Jacob Maverick Gabriel Logan Aiden "
    "Thomas Isaac Miles Grayson Santiago Anthony Wyatt Carter Jayden Ezekiel Caleb Cooper Josiah "
    "Charles Christopher Isaiah Nolan Cameron Nathan Joshua Kai Waylon Angel Lincoln Andrew Diego "
    "Adrian Jose Minh Arjun Omar Malik Darius Andre Hiroshi Tomas Emiliano Rafael Xavier Kenji"
)
NEUTRAL_NAMES = _words(
    "Alex Jordan Taylor Morgan Rowan Quinn Sage River Emerson Finley Reese Skyler Phoenix Remy "
    "Charlie Jamie Casey Dakota Ari Robin"
)
LAST_NAMES = _words(
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez "
    "Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris "
    "Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill "
    "Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Gomez Phillips "
    "Evans Turner Diaz Parker Cruz Edwards Collins Reyes Stewart Morris Morales Murphy Cook Rogers "
    "Gutierrez Ortiz Morgan Cooper Peterson Bailey Reed Kelly Howard Ramos Kim Cox Ward Richardson "
    "Watson Brooks Chavez Wood James Bennett Gray Mendoza Ruiz Hughes Price Alvarez Castillo "
    "Sanders Patel Myers Long Ross Foster Jimenez Powell Jenkins Perry Russell Sullivan Bell "
    "Coleman Butler Henderson Barnes Gonzales Fisher Vasquez Simmons Romero Jordan Patterson "
    "Alexander Hamilton Graham Reynolds Griffin Wallace Moreno West Cole Hayes Bryant Herrera "
    "Gibson Ellis Tran Medina Aguilar Stevens Murray Ford Castro Marshall Owens Harrison Fernandez "
    "McDonald Woods Washington Kennedy Wells Vargas Henry Chen Freeman Webb Tucker Guzman Burns "
    "Crawford Olson Simpson Porter Hunter Gordon Mendez Silva Shaw Snyder Mason Dixon Munoz Hunt "
    "Hicks Holmes Palmer Wagner Black Robertson Boyd Rose Stone Salazar Fox Warren Mills Rice "
    "Schmidt Garza Daniels Ferguson Nichols Stephens Soto Weaver Ryan Gardner Payne Grant Dunn "
    "Kelley Spencer Hawkins Arnold Pierce Vazquez Hansen Peters Santos Hart Bradley Knight Elliott "
    "Cunningham Duncan Armstrong Hudson Carroll Lane Riley Andrews Alvarado Ray Delgado Berry "
    "Perkins Hoffman Johnston Matthews Pena Richards Contreras Willis Carpenter Lawrence Sandoval "
    "Yang Wong Pham Le Huang Zhang Singh Shah Ali Khan Ahmed Yamamoto Tanaka Park Choi Begay Yazzie"
)

# --- distributions --------------------------------------------------------------------------
# Oregon-like public school mix (ODE fall membership): race/ethnicity and sex.
RACE_WEIGHTS = {
    "WH7": 57.5,
    "HI7": 25.5,
    "MU7": 7.3,
    "AS7": 4.0,
    "BL7": 2.4,
    "AM7": 1.2,
    "PI7": 1.0,
}
SEX_WEIGHTS = {"F": 48.6, "M": 50.6, "X": 0.8}
# English learner rate by family race: about 10% overall.
EL_RATE = {
    "HI7": 0.30,
    "AS7": 0.25,
    "PI7": 0.20,
    "MU7": 0.02,
    "WH7": 0.02,
    "BL7": 0.08,
    "AM7": 0.04,
}
EL_LANGUAGES = {
    "HI7": ["es"],
    "AS7": ["vi", "zh", "ko", "tl", "ja"],
    "PI7": ["chk", "mh", "sm"],
    "BL7": ["so", "am", "ar"],
    "WH7": ["ru", "uk", "ar"],
    "MU7": ["es"],
    "AM7": ["nv"],
}
ECON_RATE = {"HI7": 0.65, "AM7": 0.62, "BL7": 0.58, "PI7": 0.60}  # others: 0.38

MINOR_SHARE = {ELEMENTARY: 0.68, MIDDLE: 0.52, HIGH: 0.45}

# Problem behavior weights per stage (elementary, middle, high): SWIS national patterns, with
# physical behaviors higher in elementary and truancy, vaping and technology higher in high.
MINOR_BEHAVIORS = {
    "Disruption": (30, 27, 24),
    "Defiance": (18, 20, 18),
    "Disrespect": (10, 16, 15),
    "Physical Contact": (20, 10, 5),
    "Inappropriate Language": (8, 12, 12),
    "Technology Violation": (1, 6, 12),
    "Property Misuse": (7, 4, 3),
    "Tardy": (1, 3, 8),
    "Dress": (0.5, 1.5, 2),
    "Other": (3, 2, 2),
}
MAJOR_BEHAVIORS = {
    "Fighting/Physical Aggression": (24, 16, 11),
    "Defiance": (16, 14, 10),
    "Disruption": (16, 12, 8),
    "Disrespect": (10, 12, 10),
    "Abusive/Inappropriate Language": (10, 11, 9),
    "Skip/Truancy": (0.3, 4, 13),
    "Harassment": (2, 5, 4),
    "Bullying": (3, 5, 3),
    "Property Damage": (4, 3, 2),
    "Technology": (0.5, 3, 4),
    "Theft": (1.5, 2.5, 2.5),
    "Tobacco": (0, 3, 7),
    "Drugs": (0, 1.5, 5),
    "Alcohol": (0, 0.3, 1.2),
    "Out of Bounds": (4, 2, 1.5),
    "Inappropriate Affection": (0.5, 1.5, 1.5),
    "Lying": (2, 1.5, 1),
    "Academic Dishonesty": (0, 1, 3),
    "Dress Code": (0, 1, 1.5),
    "Tardy": (0, 1, 4),
    "Gang Display": (0, 0.3, 0.5),
    "Bomb Threat/False Alarm": (0.1, 0.3, 0.3),
    "Combustibles": (0, 0.2, 0.3),
    "Weapons": (0.2, 0.5, 0.5),
    "Arson": (0.02, 0.05, 0.05),
    "Other": (2, 2, 2),
}
LOCATIONS = {
    "Classroom": (48, 46, 50),
    "Hallway": (5, 14, 13),
    "Cafeteria": (8, 10, 8),
    "Playground": (18, 0, 0),
    "Bus": (5, 5, 3),
    "Bus Loading Zone": (2, 2, 1),
    "Bathroom": (3, 5, 6),
    "Gym": (4, 5, 4),
    "Office": (1, 2, 2),
    "Library": (1, 1, 1),
    "Locker Room": (0, 2, 2),
    "Parking Lot": (0, 0, 3),
    "Special Event/Assembly": (1, 1, 1),
    "Field Trip": (0.5, 0.3, 0.2),
    "Other": (2, 2, 2),
}
# Behaviors that happen in particular places.
BEHAVIOR_LOCATIONS = {
    "Tobacco": {"Bathroom": 60, "Parking Lot": 20, "Locker Room": 10, "Hallway": 10},
    "Skip/Truancy": {"Hallway": 30, "Other": 30, "Parking Lot": 20, "Bathroom": 20},
    "Tardy": {"Classroom": 60, "Hallway": 40},
    "Technology Violation": {"Classroom": 90, "Library": 10},
    "Technology": {"Classroom": 85, "Library": 10, "Bathroom": 5},
    "Academic Dishonesty": {"Classroom": 100},
    "Out of Bounds": {"Playground": 40, "Hallway": 30, "Parking Lot": 15, "Other": 15},
}
MOTIVATIONS = {
    "Obtain peer attention": 30,
    "Avoid task/activity": 20,
    "Obtain adult attention": 15,
    "Unknown": 12,
    "Obtain items/activities": 8,
    "Avoid adult(s)": 8,
    "Avoid peer(s)": 7,
}
OTHERS_INVOLVED = {
    "Peers": 45,
    "None": 20,
    "Teacher": 18,
    "Staff": 9,
    "Substitute": 5,
    "Unknown": 3,
}
# Referral-count time profile, 15-minute bins from 08:00: arrival, lunch and after-lunch peaks.
CLASSROOM_BINS = (7, 10, 9, 7, 6, 5, 5, 5, 5, 5, 5, 5, 6, 7, 8, 9, 9, 9, 11, 12, 11, 9, 8, 7, 6, 6,
                  5, 4)  # fmt: skip
SEVERE = {
    "Fighting/Physical Aggression",
    "Weapons",
    "Drugs",
    "Alcohol",
    "Arson",
    "Bomb Threat/False Alarm",
    "Combustibles",
    "Harassment",
    "Bullying",
    "Gang Display",
    "Property Damage",
    "Theft",
    "Tobacco",
}
LAW_ENFORCEMENT_RATE = {
    "Weapons": 0.7,
    "Arson": 0.8,
    "Bomb Threat/False Alarm": 0.8,
    "Drugs": 0.3,
    "Alcohol": 0.15,
    "Theft": 0.05,
    "Fighting/Physical Aggression": 0.03,
    "Gang Display": 0.1,
    "Combustibles": 0.2,
}
MINOR_ACTIONS = {
    "Conference with Student": 40,
    "Parent Contact": 25,
    "Loss of Privilege": 20,
    "Individualized Instruction": 8,
    "Time in Office": 4,
    "Other": 3,
}
MAJOR_ACTIONS_SEVERE = {
    "Out-of-School Suspension": 30,
    "In-School Suspension": 25,
    "Parent Contact": 15,
    "Time in Office": 12,
    "Detention": 8,
    "Loss of Privilege": 5,
    "Community Service": 3,
}
MAJOR_ACTIONS = {
    "Time in Office": 30,
    "Parent Contact": 22,
    "Detention": 20,
    "In-School Suspension": 10,
    "Loss of Privilege": 10,
    "Out-of-School Suspension": 4,
    "Conference with Student": 4,
}
SUSPENSIONS = {"In-School Suspension", "Out-of-School Suspension"}
EXPULSIONS = {"Expulsion with services", "Expulsion without services"}
ISS_DAYS = ("0.5", "1.0", "1.0", "1.0", "1.5", "2.0", "3.0")
OSS_DAYS = ("0.5", "1.0", "1.0", "1.0", "2.0", "2.0", "3.0", "3.0", "4.0", "5.0", "5.0", "10.0")
OSS_DAYS_SERIOUS = ("3.0", "5.0", "5.0", "10.0", "10.0")
EXPULSION_DAYS = ("45.0", "60.0", "90.0")

NARRATIVES = {
    "Disruption": (
        "Student talked over instruction and made noises after two redirections.",
        "Student left the assigned seat several times and distracted the group during work time.",
        "Student called out repeatedly during the lesson and could not settle after a reminder.",
    ),
    "Defiance": (
        "Student refused to begin the assigned task after several prompts and a choice.",
        "Student would not follow an adult's direction to line up and walked away.",
        "Student refused to hand over materials when asked and argued with staff.",
    ),
    "Disrespect": (
        "Student answered a redirection with a rude comment toward the teacher.",
        "Student made dismissive remarks to staff when asked to put materials away.",
    ),
    "Physical Contact": (
        "Student pushed a peer while waiting in line; no injury.",
        "Student was rough-housing with a peer after being asked to stop.",
    ),
    "Fighting/Physical Aggression": (
        "Student was in a physical altercation with another student; staff separated them.",
        "Student struck another student during a disagreement; the nurse checked both students.",
        "Student shoved and hit a peer after an argument that started earlier in the day.",
    ),
    "Inappropriate Language": (
        "Student used inappropriate language during group work.",
        "Student used profanity in conversation with peers after a reminder.",
    ),
    "Abusive/Inappropriate Language": (
        "Student directed profanity at a staff member after a redirection.",
        "Student used abusive language toward another student during an argument.",
    ),
    "Skip/Truancy": ("Student was not in the assigned class and was found elsewhere on campus.",),
    "Tardy": ("Student arrived late to class without a pass, again this week.",),
    "Tobacco": ("Student was found with a vape device in the restroom.",),
    "Drugs": ("Student was found with a substance believed to be marijuana.",),
    "Alcohol": ("Student appeared impaired and admitted to drinking before school.",),
    "Weapons": ("A prohibited item was found in the student's backpack and was secured.",),
    "Harassment": ("Student made repeated unwelcome comments toward another student.",),
    "Bullying": ("Student repeatedly excluded and taunted another student, as staff observed.",),
    "Technology Violation": ("Student used a phone during instruction after being asked not to.",),
    "Technology": ("Student used a school device to access blocked content after a warning.",),
    "Theft": ("Student took an item belonging to another student; the item was returned.",),
    "Property Damage": ("Student damaged school property (a desk and classroom materials).",),
    "Property Misuse": ("Student misused classroom materials after a reminder.",),
    "Out of Bounds": ("Student left the supervised area without permission.",),
}
GENERIC_NARRATIVE = ("Staff observed the behavior and followed the school's response plan.",)
FOLLOW_UPS = (
    "Parent was contacted.",
    "Student met with an administrator.",
    "Expectations were reviewed with the student.",
    "Student took a break and returned to class.",
    "",
)

BSR_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    "submitted": (("submitted",),),
    "triaged": (("submitted", "triaged"),),
    "in_progress": (("submitted", "triaged", "in_progress"),),
    "escalated": (
        ("submitted", "triaged", "escalated"),
        ("submitted", "triaged", "in_progress", "escalated"),
        ("submitted", "escalated"),
    ),
    "resolved": (
        ("submitted", "triaged", "in_progress", "resolved"),
        ("submitted", "triaged", "in_progress", "resolved"),
        ("submitted", "triaged", "resolved"),
        ("submitted", "triaged", "in_progress", "escalated", "in_progress", "resolved"),
    ),
    "closed_no_action": (
        ("submitted", "closed_no_action"),
        ("submitted", "triaged", "closed_no_action"),
    ),
}
BSR_STATE_WEIGHTS = {
    "submitted": 10,
    "triaged": 12,
    "in_progress": 20,
    "escalated": 8,
    "resolved": 40,
    "closed_no_action": 10,
}
BSR_CONCERNS = (
    "Repeated {behavior} in class; seating changes and check-ins have not helped. "
    "Requesting support to build a plan.",
    "Frequent {behavior} during unstructured times (lunch, passing periods). Would like help "
    "with a supervision and reinforcement plan.",
    "Escalating {behavior} over the past weeks. Family reports changes at home. Requesting a "
    "counselor check-in.",
    "Student seems withdrawn and has stopped turning in work; asking for a wellbeing check.",
)
BSR_RESOLUTIONS = (
    "Behavior plan in place; check-ins twice a week.",
    "Student enrolled in check-in/check-out; teacher reports improvement.",
    "Met with family; supports agreed and documented.",
    "Referred to social skills group.",
)
INTERVENTIONS_BY_TIER = {
    1: ("Academic Support", "Mentoring", "Family Engagement Plan"),
    2: ("Check-in/Check-out", "Social Skills Group", "Mentoring", "Counseling"),
    3: ("Behavior Plan", "Function-based Support", "Counseling"),
}
INTERVENTION_GOALS = (
    "Reduce office referrals by half over six weeks.",
    "Use a break card instead of leaving class; meet the daily point goal on 4 of 5 days.",
    "Complete assignments in core classes; weekly check with the mentor.",
    "Practice two coping strategies and use them during transitions.",
)
CONFIDENTIAL_NOTES = (
    "Student shared stress related to a family change; follow up with family support resources.",
    "Screening completed; monitoring for anxiety. Coordinate with the school psychologist.",
    "Family requested that details of sessions stay with the counselor.",
)


class _Weighted:
    """A fixed weighted choice (cumulative weights computed once)."""

    __slots__ = ("cum", "keys")

    def __init__(self, weights: dict[str, float]):
        items = [(k, w) for k, w in weights.items() if w > 0]
        self.keys = [k for k, _ in items]
        self.cum = list(itertools.accumulate(w for _, w in items))

    def pick(self, rng: random.Random) -> str:
        return rng.choices(self.keys, cum_weights=self.cum)[0]


def _per_stage(table: dict[str, tuple[float, ...]]) -> dict[int, _Weighted]:
    return {s: _Weighted({k: w[s] for k, w in table.items()}) for s in (ELEMENTARY, MIDDLE, HIGH)}


_MINOR = _per_stage(MINOR_BEHAVIORS)
_MAJOR = _per_stage(MAJOR_BEHAVIORS)
_LOCATION = _per_stage(LOCATIONS)
_BEHAVIOR_LOCATION = {b: _Weighted(w) for b, w in BEHAVIOR_LOCATIONS.items()}
_MOTIVATION = _Weighted(MOTIVATIONS)
_OTHERS = _Weighted(OTHERS_INVOLVED)
_MINOR_ACTION = _Weighted(MINOR_ACTIONS)
_MAJOR_ACTION_SEVERE = _Weighted(MAJOR_ACTIONS_SEVERE)
_MAJOR_ACTION = _Weighted(MAJOR_ACTIONS)
_RACE = _Weighted(RACE_WEIGHTS)
_SEX = _Weighted(SEX_WEIGHTS)
_BSR_STATE = _Weighted(BSR_STATE_WEIGHTS)


# --- what the run produced ------------------------------------------------------------------


@dataclass
class SeedReport:
    """What :func:`seed_demo` did, for the command to print and tests to check."""

    password: str
    created: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    deleted: Counter = field(default_factory=Counter)
    logins: list[tuple[str, str, bool]] = field(default_factory=list)  # username, text, exists
    admin_created: bool = False
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(self.counts.values())


# --- records kept in memory while a district is built ------------------------------------------


@dataclass(slots=True)
class _Student:
    index: int
    id: int
    number: str
    first: str
    middle: str
    last: str
    sex: str
    grade: str
    stage: int
    school: int
    family: int
    race: str
    idea: bool
    s504: bool
    el: bool
    econ: bool
    entry: date
    entry_day: int
    weight: float
    absence_rate: float
    excused_share: float
    tardy_rate: float
    ability: float
    change: tuple[date, str] | None = None
    cohort: int = -1
    referrals: int = 0
    key_date: date | None = None
    top_behavior: str = ""


@dataclass(slots=True)
class _Family:
    last: str
    race: str
    language: str
    guardians: list[tuple[int, str]]  # (guardian id, relationship)
    children: list[int]


@dataclass(slots=True)
class _Staff:
    index: int
    id: int
    number: str
    first: str
    last: str
    email: str
    position: str
    schools: list[int]
    dept: str = ""
    room: str = ""
    periods: set[str] = field(default_factory=set)
    sections: list[int] = field(default_factory=list)
    user_id: int | None = None


@dataclass(slots=True)
class _Section:
    index: int
    id: int
    school: int
    session: str
    course_code: str
    title: str
    code: str
    period: str
    teacher: int


@dataclass(slots=True)
class _Cohort:
    index: int
    school: int
    grades: tuple[str, ...]
    stage: int
    students: list[int]
    sections: dict[str, int] = field(default_factory=dict)  # period ("" = homeroom) -> section


# --- low-level bulk helpers ------------------------------------------------------------------


def _quote(name: str) -> str:
    return connection.ops.quote_name(name)


_sequences: dict[str, str] = {}


def _reserve_ids(model: type[models.Model], count: int) -> list[int]:
    """Take ``count`` ids from the table's own sequence, safe against concurrent writers."""
    if count <= 0:
        return []
    table = model._meta.db_table
    with connection.cursor() as cursor:
        if table not in _sequences:
            cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [table])
            _sequences[table] = cursor.fetchone()[0]
        cursor.execute(
            "SELECT array_agg(nextval(%s::regclass)) FROM generate_series(1, %s)",
            [_sequences[table], count],
        )
        return cursor.fetchone()[0]


def _copy(model: type[models.Model], columns: Sequence[str], rows: Iterable[Sequence]) -> None:
    """Stream rows into the model's table with COPY (text format)."""
    table = _quote(model._meta.db_table)
    cols = ", ".join(_quote(c) for c in columns)
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY {table} ({cols}) FROM STDIN") as cp,
    ):
        write = cp.write_row
        for row in rows:
            write(row)


# TenantModel columns every bulk row starts with; change_version is stamped by the trigger.
_TENANT_COLUMNS = ("id", "district_id", "source_system", "source_id", "created_at", "updated_at")


class _Writer:
    """COPY batches of tenant rows with reserved ids, one audit entry per batch."""

    def __init__(self, *, district_id: int, actor, counts: Counter):
        self.district_id = district_id
        self.actor = actor
        self.counts = counts

    def insert(
        self,
        model: type[models.Model],
        columns: Sequence[str],
        rows: list[tuple],
        ids: list[int] | None = None,
    ) -> list[int]:
        """Insert rows of ``(created_at, *columns)``; returns the new ids in row order.

        ``ids`` are ids reserved earlier (when other rows had to refer to them first).
        """
        if not rows:
            return []
        if ids is None:
            ids = _reserve_ids(model, len(rows))
        did, src = self.district_id, SOURCE_SYSTEM
        _copy(
            model,
            (*_TENANT_COLUMNS, *columns),
            ((i, did, src, "", row[0], *row) for i, row in zip(ids, rows, strict=True)),
        )
        audit_bulk(
            model=model,
            action=LogEntry.Action.CREATE,
            object_ids=ids,
            actor=self.actor,
            note=AUDIT_NOTE,
        )
        self.counts[model._meta.label] += len(ids)
        return ids

    def insert_batched(
        self,
        model: type[models.Model],
        columns: Sequence[str],
        rows: list[tuple],
        ids: list[int] | None = None,
    ) -> list[int]:
        """:meth:`insert` in batches of COPY_BATCH rows, one audit entry each."""
        out: list[int] = []
        for start in range(0, len(rows), COPY_BATCH):
            end = start + COPY_BATCH
            out += self.insert(model, columns, rows[start:end], ids[start:end] if ids else None)
        return out


def _progress(desc: str, total: int, unit: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not enabled, leave=True)


# --- one district ---------------------------------------------------------------------------


class _DistrictBuilder:
    """Builds one district from its plan, phase by phase, inside the caller's transaction."""

    def __init__(
        self, plan: DistrictPlan, *, seed: int, actor, password_hash: str, progress: bool,
        counts: Counter,
    ):  # fmt: skip
        self.plan = plan
        self.rng = random.Random(f"bxos-demo:{seed}:{plan.code}")
        self.actor = actor
        self.password_hash = password_hash
        self.show = progress
        self.counts = counts
        self.tz = ZoneInfo(plan.time_zone)
        self.days = school_days(YEAR_START, DATA_END)
        self.all_days = school_days(YEAR_START, YEAR_END)
        self.day_index = {d: i for i, d in enumerate(self.all_days)}
        # Attendance rows are written for each school day at 08:30 local; precomputed as text.
        self.day_text = [d.isoformat() for d in self.days]
        self.day_stamp = [self._utc(d, time(8, 30)).isoformat() for d in self.days]
        self.students: list[_Student] = []
        self.families: list[_Family] = []
        self.staff: list[_Staff] = []
        self.sections: list[_Section] = []
        self.cohorts: list[_Cohort] = []
        self.emails: Counter = Counter()
        self.login_staff: dict[str, _Staff] = {}
        self._descriptor_cache: dict[tuple[str, str], int] = {}
        self.staff_at: dict[tuple[int, str], list[_Staff]] = {}

    def _utc(self, day: date, at: time) -> datetime:
        return datetime.combine(day, at, tzinfo=self.tz).astimezone(UTC)

    # -- phase 1: the district, its schools and sessions (services: audited one by one) ------

    def setup(self) -> None:
        plan = self.plan
        self.district = model_create(
            model=District,
            actor=self.actor,
            data={
                "name": plan.name,
                "code": plan.code,
                "state_code": plan.state_code,
                "time_zone": plan.time_zone,
            },
        )
        self.writer = _Writer(district_id=self.district.pk, actor=self.actor, counts=self.counts)
        self.counts[District._meta.label] += 1
        self.schools = [
            model_create(
                model=School,
                actor=self.actor,
                data={
                    "district": self.district,
                    "name": sp.name,
                    "code": sp.code,
                    "school_type": sp.school_type,
                    "grade_low": sp.grades[0],
                    "grade_high": sp.grades[-1],
                    "time_zone": plan.time_zone,
                    "source_system": SOURCE_SYSTEM,
                },
            )
            for sp in plan.schools
        ]
        self.counts[School._meta.label] += len(self.schools)
        self.sessions: dict[str, AcademicSession] = {}
        for key, name, session_type, parent, start, end in SESSIONS:
            self.sessions[key] = model_create(
                model=AcademicSession,
                actor=self.actor,
                data={
                    "district": self.district,
                    "name": name,
                    "session_type": session_type,
                    "parent": self.sessions[parent] if parent else None,
                    "school_year": 2027,
                    "start_date": start,
                    "end_date": end,
                    "source_system": SOURCE_SYSTEM,
                },
            )
        self.counts[AcademicSession._meta.label] += len(SESSIONS)
        self.descriptors = {
            (category, code): pk
            for category, code, pk in Descriptor.objects.filter(district=None)
            .order_by("category", "code")
            .values_list("category", "code", "pk")
        }

    def descriptor(self, category: str, label: str) -> int:
        key = (category, label)
        pk = self._descriptor_cache.get(key)
        if pk is None:
            # slugify is slow and this runs per referral field: look each label up once.
            pk = self._descriptor_cache[key] = self.descriptors[(str(category), code_for(label))]
        return pk

    # -- phase 2: students, families, demographics, enrollments --------------------------------

    def people(self) -> None:
        plan = self.plan
        bar = _progress(f"{plan.code}: students", plan.students, "student", self.show)
        # Students per school in proportion to grades served, then evenly per grade.
        grade_counts = _split_evenly(plan.students, sum(len(s.grades) for s in plan.schools))
        slots = [(si, g) for si, sp in enumerate(plan.schools) for g in sp.grades]
        ids = _reserve_ids(Student, plan.students)
        late_days = [d for d in self.days if date(2026, 9, 8) <= d <= date(2026, 10, 30)]
        for (school_index, grade), count in zip(slots, grade_counts, strict=True):
            for _ in range(count):
                st = self._new_student(len(self.students), ids[len(self.students)], grade,
                                       school_index, late_days)  # fmt: skip
                self.students.append(st)
                bar.update()
        bar.close()
        self._assign_referral_counts()
        self._write_people()

    def _new_student(
        self, index: int, pk: int, grade: str, school: int, late_days: list[date]
    ) -> _Student:
        rng, plan = self.rng, self.plan
        family = self._family_for(grade)
        fam = self.families[family]
        sex = _SEX.pick(rng)
        first = rng.choice(
            FEMALE_NAMES if sex == "F" else MALE_NAMES if sex == "M" else NEUTRAL_NAMES
        )
        middle = rng.choice(FEMALE_NAMES + MALE_NAMES) if rng.random() < 0.7 else ""
        stage = stage_of(grade)
        idea = rng.random() < (0.17 if sex == "M" else 0.09 if sex == "F" else 0.13)
        s504 = not idea and rng.random() < 0.02
        el = fam.language != "en" and rng.random() < (0.9 if stage == ELEMENTARY else 0.7)
        econ = rng.random() < ECON_RATE.get(fam.race, 0.38)
        late = rng.random() < 0.03
        entry = rng.choice(late_days) if late else YEAR_START
        chronic = rng.random() < (0.16, 0.20, 0.27)[stage]
        absence = rng.uniform(0.10, 0.30) if chronic else rng.uniform(0.01, 0.07)
        # Referral propensity: most students none, a heavy (Pareto) tail of frequent referrals.
        weight = 0.0
        if rng.random() >= 0.55:
            weight = min(10.0, rng.paretovariate(1.16))
            weight *= (0.6, 1.5, 1.0)[stage] * {"M": 1.7, "F": 0.8}.get(sex, 1.0)
            weight *= (1.6 if idea else 1.0) * (1.3 if chronic else 1.0)
            weight = min(12.0, weight)  # about 60 referrals in the fall at most
        change = None
        if rng.random() < 0.015:
            # Mid-year status change: a language screening or an evaluation completes.
            options = {
                "idea": 0 if idea else 3,
                "s504": 0 if idea or s504 else 1,
                "econ": 0 if econ else 1,
                "el": 3 if not el and fam.language != "en" else 0,
            }
            if any(options.values()):
                when = rng.choice([d for d in self.days if date(2026, 9, 21) <= d <= DATA_END])
                change = (when, _Weighted(options).pick(rng))
        number = plan.student_number_start + index
        st = _Student(
            index=index,
            id=pk,
            number=str(number),
            first=first,
            middle=middle,
            last=fam.last,
            sex=sex,
            grade=grade,
            stage=stage,
            school=school,
            family=family,
            race=fam.race,
            idea=idea,
            s504=s504,
            el=el,
            econ=econ,
            entry=entry,
            entry_day=self.days.index(entry),
            weight=weight,
            absence_rate=absence,
            excused_share=0.45 if chronic else 0.7,
            tardy_rate=rng.uniform(0.01, (0.04, 0.05, 0.08)[stage]),
            ability=rng.gauss(84, 8),
            change=change,
        )
        fam.children.append(index)
        return st

    def _family_for(self, grade: str) -> int:
        rng = self.rng
        # About a quarter of students have a sibling in the district: same family, other grade.
        if self.families and rng.random() < 0.28:
            candidate = rng.randrange(len(self.families))
            fam = self.families[candidate]
            if len(fam.children) < 3 and all(self.students[c].grade != grade for c in fam.children):
                return candidate
        race = _RACE.pick(rng)
        language = "en"
        if rng.random() < EL_RATE[race] * 1.15:
            language = rng.choice(EL_LANGUAGES[race])
        self.families.append(
            _Family(
                last=rng.choice(LAST_NAMES), race=race, language=language, guardians=[], children=[]
            )
        )
        return len(self.families) - 1

    def _assign_referral_counts(self) -> None:
        total = round(self.plan.students * self.plan.referrals_per_student)
        weights = [s.weight for s in self.students]
        if total <= 0 or not any(weights):
            return
        cum = list(itertools.accumulate(weights))
        counts = Counter(self.rng.choices(range(len(self.students)), cum_weights=cum, k=total))
        for index, count in counts.items():
            self.students[index].referrals = count

    def _write_people(self) -> None:
        plan, w = self.plan, self.writer
        synced = self._utc(*ROSTER_SYNCED)
        year_id = self.sessions["year"].pk
        student_rows, demo_rows, enroll_rows = [], [], []
        for st in self.students:
            email = ""
            if GRADES.index(st.grade) >= 3:
                email = f"{st.first}.{st.last}.{st.number[-4:]}@students.{plan.domain}".lower()
            student_rows.append((
                synced, st.number, str(plan.state_id_start + st.index), st.first, st.middle,
                st.last, "", self._birth_date(st.grade), st.grade, email, True,
            ))  # fmt: skip
            flags = [st.idea, st.s504, st.el, st.econ]
            base = (st.id, st.race, st.sex)
            if st.change:
                when, what = st.change
                demo_rows.append((synced, *base, DEMOGRAPHICS_FROM, when, *flags))
                flags[("idea", "s504", "el", "econ").index(what)] = True
                if what == "idea":
                    flags[1] = False  # an IEP replaces a 504 plan
                st.idea, st.s504, st.el, st.econ = flags
                demo_rows.append((self._utc(when, time(9, 0)), *base, when, None, *flags))
            else:
                demo_rows.append((synced, *base, DEMOGRAPHICS_FROM, None, *flags))
            entered = synced if st.entry == YEAR_START else self._utc(st.entry, time(8, 0))
            enroll_rows.append((
                entered, st.id, self.schools[st.school].pk, year_id, st.grade, st.entry, None, "",
                True,
            ))  # fmt: skip
        # Student ids were reserved up front: families and cohorts refer to them.
        w.insert_batched(
            Student,
            ("student_number", "state_id", "first_name", "middle_name", "last_name",
             "preferred_name", "birth_date", "grade_level", "email", "is_active"),
            student_rows,
            ids=[st.id for st in self.students],
        )  # fmt: skip
        del student_rows
        w.insert_batched(
            StudentDemographic,
            ("student_id", "race_ethnicity", "sex", "valid_from", "valid_to", "idea_disability",
             "section_504", "english_learner", "economically_disadvantaged"),
            demo_rows,
        )  # fmt: skip
        del demo_rows
        w.insert_batched(
            Enrollment,
            ("student_id", "school_id", "school_year_id", "grade_level", "entry_date",
             "exit_date", "exit_reason", "is_primary"),
            enroll_rows,
        )  # fmt: skip
        del enroll_rows
        self._write_guardians(synced)

    def _birth_date(self, grade: str) -> date:
        rng = self.rng
        # Kindergarten in fall 2026: five by September 1 (born 2020-09-02 to 2021-09-01).
        offset = GRADES.index(grade) + (1 if rng.random() < 0.02 else 0)  # a few were held back
        start = date(2020 - offset, 9, 2)
        return start + timedelta(days=rng.randrange(365))

    def _write_guardians(self, synced: datetime) -> None:
        rng, plan = self.rng, self.plan
        guardian_rows: list[tuple] = []
        for fam in self.families:
            two = rng.random() < 0.62
            if two:
                pair = rng.choices(
                    [("mother", "father"), ("mother", "mother"), ("father", "father"),
                     ("mother", "grandparent")], cum_weights=[90, 92, 94, 100],
                )[0]  # fmt: skip
            else:
                pair = (rng.choices(["mother", "father", "grandparent", "guardian", "foster"],
                                    cum_weights=[66, 84, 93, 97, 100])[0],)  # fmt: skip
            for relationship in pair:
                sex = "M" if relationship == "father" else "F"
                if relationship in ("grandparent", "guardian", "foster"):
                    sex = rng.choice("MF")
                first = rng.choice(MALE_NAMES if sex == "M" else FEMALE_NAMES)
                same_name = relationship != "foster" and rng.random() < 0.8
                last = fam.last if same_name else rng.choice(LAST_NAMES)
                email = self._email(first, last, "example.com")
                phone = f"({plan.area_code}) 555-{rng.randrange(100, 200):04d}"
                guardian_rows.append((synced, first, last, email, phone, fam.language))
                fam.guardians.append((-1, relationship))
        ids = self.writer.insert_batched(
            Guardian,
            ("first_name", "last_name", "email", "phone", "preferred_language"),
            guardian_rows,
        )
        del guardian_rows
        link_rows: list[tuple] = []
        position = 0
        for fam in self.families:
            fam.guardians = [(ids[position + k], rel) for k, (_, rel) in enumerate(fam.guardians)]
            position += len(fam.guardians)
            separated = len(fam.guardians) == 2 and rng.random() < 0.25
            for child in fam.children:
                student_id = self.students[child].id
                for k, (guardian_id, relationship) in enumerate(fam.guardians):
                    lives_with = not (separated and k == 1)
                    link_rows.append((
                        synced, student_id, guardian_id, relationship, k == 0, lives_with,
                        True, lives_with or rng.random() < 0.8,
                    ))  # fmt: skip
        self.writer.insert_batched(
            StudentGuardian,
            ("student_id", "guardian_id", "relationship", "is_primary_contact", "lives_with",
             "has_custody", "receives_notifications"),
            link_rows,
        )  # fmt: skip

    def _email(self, first: str, last: str, domain: str) -> str:
        local = f"{first}.{last}".lower().replace(" ", "")
        self.emails[(local, domain)] += 1
        n = self.emails[(local, domain)]
        return f"{local}{n if n > 1 else ''}@{domain}"

    # -- phase 3: cohorts, staff, sections, section enrollments -------------------------------

    def schedule(self) -> None:
        plan, rng = self.plan, self.rng
        bar = _progress(f"{plan.code}: staff & sections", len(plan.schools) + 2, "step", self.show)
        admins = 1 if plan.students < 1000 else 2 + plan.students // 20000
        self._new_staff(StaffPosition.DISTRICT_ADMIN, list(range(len(plan.schools))), admins)
        for school_index, sp in enumerate(plan.schools):
            members = [s for s in self.students if s.school == school_index]
            n = len(members)
            ap = {SchoolType.ELEMENTARY: round(n / 600), SchoolType.OTHER: round(n / 400)}.get(
                sp.school_type, max(1, round(n / 400))
            )
            self._new_staff(StaffPosition.PRINCIPAL, [school_index])
            self._new_staff(StaffPosition.ASSISTANT_PRINCIPAL, [school_index], count=ap)
            self._new_staff(StaffPosition.COUNSELOR, [school_index], count=max(1, round(n / 350)))
            self._new_staff(StaffPosition.SUPPORT, [school_index], count=max(1, round(n / 75)))
            room = itertools.count(101)
            pools: dict[str, list[_Staff]] = {}
            self.secondary_cohorts = 0
            section_numbers: Counter = Counter()
            for stage in (ELEMENTARY, MIDDLE, HIGH):
                by_grade = [(g, [s.index for s in members if s.grade == g])
                            for g in sp.grades if stage_of(g) == stage]  # fmt: skip
                for grades, band in _bands([(g, sts) for g, sts in by_grade if sts]):
                    rng.shuffle(band)
                    target = 24 if stage == ELEMENTARY else 28
                    for group in _split(band, max(1, round(len(band) / target))):
                        cohort = _Cohort(len(self.cohorts), school_index, grades, stage, group)
                        self.cohorts.append(cohort)
                        for student in group:
                            self.students[student].cohort = cohort.index
                        self._cohort_sections(cohort, pools, room, section_numbers)
            bar.update()
        # One support person in ten serves a second school (psychologist, behavior specialist).
        support = [s for s in self.staff if s.position == StaffPosition.SUPPORT]
        if len(plan.schools) > 1:
            for s in support[5::10]:
                other = rng.choice([i for i in range(len(plan.schools)) if i != s.schools[0]])
                s.schools.append(other)
        for s in self.staff:
            for school in s.schools:
                self.staff_at.setdefault((school, s.position), []).append(s)
        self._write_staff_and_sections()
        bar.update()
        self._write_section_enrollments()
        bar.update()
        bar.close()

    def _new_staff(self, position: str, schools: list[int], count: int = 1, dept: str = "",
                   room: str = "") -> _Staff | None:  # fmt: skip
        member = None
        for _ in range(count):
            rng = self.rng
            female = rng.random() < (0.76 if position == StaffPosition.TEACHER else 0.6)
            first = rng.choice(FEMALE_NAMES if female else MALE_NAMES)
            last = rng.choice(LAST_NAMES)
            index = len(self.staff)
            member = _Staff(
                index=index,
                id=0,
                number=f"E{10001 + index}",
                first=first,
                last=last,
                email=self._email(first, last, self.plan.domain),
                position=str(position),
                schools=list(schools),
                dept=dept,
                room=room,
            )
            self.staff.append(member)
        return member

    def _cohort_sections(self, cohort: _Cohort, pools: dict[str, list[_Staff]], room,
                         section_numbers: Counter) -> None:  # fmt: skip
        first, last = cohort.grades[0], cohort.grades[-1]
        if cohort.stage == ELEMENTARY:
            if len(cohort.grades) > 1:
                label = f"Grades {first}-{last}"
            else:
                label = "Kindergarten" if first == "KG" else f"Grade {int(first)}"
            code = f"HR{first}" + (last if len(cohort.grades) > 1 else "")
            teacher = self._new_staff(StaffPosition.TEACHER, [cohort.school], dept="HR",
                                      room=str(next(room)))  # fmt: skip
            self._add_section(cohort, "", "year", code, f"{label} Homeroom", teacher,
                              section_numbers)  # fmt: skip
            return
        courses = _secondary_courses(first, cohort.stage, self.rng)
        # Rotate the periods from cohort to cohort so each period mixes subjects.
        shift = self.secondary_cohorts
        self.secondary_cohorts += 1
        for slot, (dept, course_code, title, session) in enumerate(courses):
            period = str((slot + shift) % 7 + 1)
            teacher = self._teacher_for(cohort.school, dept, period, pools, room)
            self._add_section(cohort, period, session, course_code, title, teacher,
                              section_numbers)  # fmt: skip

    def _teacher_for(self, school: int, dept: str, period: str, pools, room) -> _Staff:
        # Greedy: the first teacher of the department free that period with under 6 sections.
        pool = pools.setdefault(dept, [])
        for teacher in pool:
            if period not in teacher.periods:
                if len(teacher.sections) == 5:  # this is their sixth: full from now on
                    pool.remove(teacher)
                return teacher
        teacher = self._new_staff(StaffPosition.TEACHER, [school], dept=dept,
                                  room=str(next(room)))  # fmt: skip
        pool.append(teacher)
        return teacher

    def _add_section(self, cohort: _Cohort, period: str, session: str, course_code: str,
                     title: str, teacher: _Staff, numbers: Counter) -> None:  # fmt: skip
        numbers[course_code] += 1
        section = _Section(
            index=len(self.sections),
            id=0,
            school=cohort.school,
            session=session,
            course_code=course_code,
            title=title,
            code=f"{course_code}-{numbers[course_code]:02d}",
            period=period,
            teacher=teacher.index,
        )
        self.sections.append(section)
        teacher.sections.append(section.index)
        teacher.periods.add(period)
        cohort.sections[period] = section.index

    def _write_staff_and_sections(self) -> None:
        w = self.writer
        hired = self._utc(date(2026, 8, 10), time(8, 0))
        ids = w.insert_batched(
            Staff,
            ("staff_number", "first_name", "last_name", "email", "position", "is_active"),
            [(hired, s.number, s.first, s.last, s.email, s.position, True) for s in self.staff],
        )
        for member, pk in zip(self.staff, ids, strict=True):
            member.id = pk
        through = Staff.schools.through
        links = [(s.id, self.schools[i].pk) for s in self.staff for i in s.schools]
        _copy(
            through,
            ("id", "staff_id", "school_id"),
            ((i, *link) for i, link in zip(_reserve_ids(through, len(links)), links, strict=True)),
        )
        # The links are a many-to-many field of Staff: audit them as a change of those staff.
        audit_bulk(model=Staff, action=LogEntry.Action.UPDATE, object_ids=ids, actor=self.actor,
                   note=f"{AUDIT_NOTE}: schools set")  # fmt: skip
        self.counts["schools.Staff_schools"] += len(links)
        synced = self._utc(*ROSTER_SYNCED)
        section_ids = w.insert_batched(
            Section,
            ("school_id", "session_id", "course_code", "course_title", "section_code", "period",
             "room", "teacher_id"),
            [(synced, self.schools[s.school].pk, self.sessions[s.session].pk, s.course_code,
              s.title, s.code, s.period, self.staff[s.teacher].room, self.staff[s.teacher].id)
             for s in self.sections],
        )  # fmt: skip
        for section, pk in zip(self.sections, section_ids, strict=True):
            section.id = pk

    def _write_section_enrollments(self) -> None:
        rows = []
        synced = self._utc(*ROSTER_SYNCED)
        for st in self.students:
            stamp = synced if st.entry == YEAR_START else self._utc(st.entry, time(8, 0))
            for section_index in self.cohorts[st.cohort].sections.values():
                rows.append((stamp, self.sections[section_index].id, st.id, st.entry))
            if len(rows) >= COPY_BATCH:
                self.writer.insert(SectionEnrollment, ("section_id", "student_id", "begin_date"),
                                   rows)  # fmt: skip
                rows = []
        self.writer.insert(SectionEnrollment, ("section_id", "student_id", "begin_date"), rows)

    # -- phase 4: logins and access (services: audited, evented) ------------------------------

    def create_logins(self) -> None:
        plan = self.plan
        bar = _progress(f"{plan.code}: logins & access", len(plan.logins), "login", self.show)
        codes = [sp.code for sp in plan.schools]
        for username, position, school_code, dept in plan.logins:
            candidates = [
                s for s in self.staff
                if s.position == position
                and (not school_code or codes.index(school_code) in s.schools)
                and (not dept or s.dept == dept)
            ]  # fmt: skip
            # The teacher login gets the colleague with the most sections to show.
            member = max(candidates, key=lambda s: (len(s.sections), -s.index))
            staff = Staff.objects.get(pk=member.id)
            user = school_services.staff_login_create(
                actor=self.actor, staff=staff, username=username, password=None
            )
            # One hash for every demo login: hashing costs ~0.3 s each, and they share a password.
            user.password = self.password_hash
            user.save(update_fields=["password"])
            member.user_id = user.pk
            self.login_staff[username] = member
            if position in (StaffPosition.PRINCIPAL, StaffPosition.COUNSELOR):
                schools = [self.schools[i] for i in member.schools]
                school_services.staff_set_schools(actor=self.actor, staff=staff, schools=schools)
            if position == StaffPosition.TEACHER:
                for section in Section.objects.filter(teacher=staff).order_by("section_code"):
                    school_services.section_set_teacher(
                        actor=self.actor, section=section, teacher=staff
                    )
            if position == StaffPosition.COUNSELOR and plan.caseload:
                school_services.caseload_add(
                    actor=self.actor, counselor=user, students=self._caseload(member)
                )
            self.counts["common.User"] += 1
            bar.update()
        bar.close()

    def _caseload(self, counselor: _Staff) -> list[Student]:
        # Mostly the counselor's own students with the most referrals, plus a few former
        # students now in 9th grade (transition follow-up), which only the caseload reaches.
        size = self.plan.caseload
        own = sorted(
            (s for s in self.students if s.school in counselor.schools),
            key=lambda s: (-s.referrals, s.index),
        )
        picked = own[: size - size // 5]
        ninth = [s for s in self.students if s.grade == "09"]
        picked += self.rng.sample(ninth, min(len(ninth), size - len(picked)))
        return list(Student.objects.filter(pk__in=[s.id for s in picked]).order_by("pk"))

    # -- phase 5: attendance, grades, referrals (streamed per chunk of students) --------------

    def activity(self) -> None:
        plan = self.plan
        bar = _progress(f"{plan.code}: attendance & referrals", plan.students, "student",
                        self.show)  # fmt: skip
        self.school_students = [
            [s.id for s in self.students if s.school == i] for i in range(len(plan.schools))
        ]
        self.school_staff = []
        for i in range(len(plan.schools)):
            here = [s for s in self.staff if i in s.schools]
            weights = {
                StaffPosition.TEACHER: 6, StaffPosition.SUPPORT: 3,
                StaffPosition.ASSISTANT_PRINCIPAL: 2, StaffPosition.PRINCIPAL: 1,
                StaffPosition.COUNSELOR: 1,
            }  # fmt: skip
            self.school_staff.append(
                (here, list(itertools.accumulate(weights.get(s.position, 0) for s in here)))
            )
        self.last_week = set(range(max(0, len(self.days) - 5), len(self.days)))
        for start in range(0, len(self.students), CHUNK_STUDENTS):
            chunk = self.students[start : start + CHUNK_STUDENTS]
            self._activity_chunk(chunk)
            bar.update(len(chunk))
        bar.close()

    def _activity_chunk(self, chunk: list[_Student]) -> None:
        rng, w = self.rng, self.writer
        rand = rng.random
        n_days = len(self.days)
        day_text, day_stamp = self.day_text, self.day_stamp
        attendance: list[tuple] = []
        periods: list[tuple] = []
        grades: list[tuple] = []
        incidents: list[tuple] = []
        actions: list[tuple] = []  # (incident position in chunk, ...)
        participants: list[tuple] = []
        graded = self._utc(*Q1_POSTED)
        q1 = self.sessions["q1"].pk
        for st in chunk:
            school_id = self.schools[st.school].pk
            cohort = self.cohorts[st.cohort]
            # Daily attendance: a two-state chain so absences come in runs (illness, trips).
            stay = 0.45
            p_start = st.absence_rate * (1 - stay) / max(0.05, 1 - st.absence_rate)
            absent = False
            present_days: list[int] = []
            week_status: dict[int, str] = {}
            absences = 0
            for di in range(st.entry_day, n_days):
                if rand() < (stay if absent else p_start):
                    absent = True
                    absences += 1
                    status = "excused" if rand() < st.excused_share else "unexcused"
                    minutes = 390
                else:
                    absent = False
                    present_days.append(di)
                    r = rand()
                    if r < st.tardy_rate:
                        status, minutes = "tardy", 5 + int(rand() * 50)
                    elif r < st.tardy_rate + 0.008:
                        status, minutes = "early_departure", 60 + int(rand() * 120)
                    else:
                        status, minutes = "present", 0
                attendance.append((day_stamp[di], st.id, school_id, day_text[di], status, minutes))
                if di in self.last_week:
                    week_status[di] = status
            # Period attendance, a sample: every class meeting of the last school week.
            if cohort.stage != ELEMENTARY:
                for di, status in week_status.items():
                    for period, section_index in cohort.sections.items():
                        p_status = status
                        if status == "tardy":
                            p_status = "tardy" if period == "1" else "present"
                        elif status == "early_departure":
                            p_status = "early_departure" if period in ("6", "7") else "present"
                        elif status == "present":
                            r = rand()
                            if r < 0.015:
                                p_status = "tardy"
                            elif r < 0.015 + (0.01 if cohort.stage == HIGH else 0.0):
                                p_status = "unexcused"
                        periods.append((day_stamp[di], st.id, self.sections[section_index].id,
                                        day_text[di], p_status))  # fmt: skip
            # First-quarter grades: ability, less for absences and referrals.
            attended = max(1, n_days - st.entry_day)
            penalty = 45 * absences / attended + 0.5 * min(st.referrals, 20)
            for section_index in cohort.sections.values():
                score = st.ability + rng.gauss(0, 6) - penalty
                score = min(100.0, max(35.0, score))
                comment = ""
                if rand() < 0.1:
                    comment = rng.choice(
                        ("Missing assignments.", "Great effort this quarter.",
                         "Participates well in class.", "Please see me about late work.")
                    )  # fmt: skip
                grades.append((graded, st.id, self.sections[section_index].id, q1,
                               _letter(score), f"{score:.2f}", comment))  # fmt: skip
            if st.referrals and present_days:
                self._referrals(st, cohort, present_days, incidents, actions, participants)
        w.insert(DailyAttendance, ("student_id", "school_id", "date", "status", "minutes_absent"),
                 attendance)  # fmt: skip
        del attendance
        w.insert(PeriodAttendance, ("student_id", "section_id", "date", "status"), periods)
        w.insert(Grade, ("student_id", "section_id", "grading_period_id", "letter_grade",
                         "numeric_grade", "comment"), grades)  # fmt: skip
        incident_ids = w.insert(
            Incident,
            ("student_id", "school_id", "reported_by_id", "occurred_on", "occurred_at", "level",
             "problem_behavior_id", "subtype_id", "location_id", "motivation_id",
             "others_involved_id", "restraint_seclusion", "law_enforcement_referral",
             "school_related_arrest", "zero_tolerance_expulsion", "idea_removal",
             "services_after_removal", "narrative"),
            incidents,
        )  # fmt: skip
        w.insert(
            IncidentAction,
            ("incident_id", "action_id", "duration_days", "start_date", "end_date"),
            [(a[0], incident_ids[a[1]], *a[2:]) for a in actions],
        )
        w.insert(
            IncidentParticipant,
            ("incident_id", "student_id", "role"),
            [(p[0], incident_ids[p[1]], *p[2:]) for p in participants],
        )

    def _referrals(self, st: _Student, cohort: _Cohort, present_days: list[int],
                   incidents: list, actions: list, participants: list) -> None:  # fmt: skip
        rng = self.rng
        rand = rng.random
        n_days = len(self.days)
        # Referrals rise through the fall (October and November are the busiest months).
        cum = list(itertools.accumulate(1 + 0.6 * d / n_days for d in present_days))
        chosen = sorted(rng.choices(present_days, cum_weights=cum, k=st.referrals))
        behaviors: Counter = Counter()
        school_students = self.school_students[st.school]
        staff_here, staff_cum = self.school_staff[st.school]
        for n, di in enumerate(chosen):
            day = self.days[di]
            minor = rand() < MINOR_SHARE[st.stage]
            behavior = (_MINOR if minor else _MAJOR)[st.stage].pick(rng)
            behaviors[behavior] += 1
            where = _BEHAVIOR_LOCATION.get(behavior) or _LOCATION[st.stage]
            location = where.pick(rng)
            if location == "Playground" and st.stage != ELEMENTARY:
                location = "Hallway"
            at = _time_for(location, rng)
            # Classroom referrals come from the teacher of the class meeting at that time.
            if location == "Classroom":
                if cohort.stage == ELEMENTARY:
                    section_index = cohort.sections[""]
                else:
                    minutes = max(0, (at.hour - 8) * 60 + at.minute)
                    section_index = cohort.sections[str(min(7, minutes // 55 + 1))]
                reporter = self.staff[self.sections[section_index].teacher].id
            else:
                reporter = rng.choices(staff_here, cum_weights=staff_cum)[0].id
            level = "minor" if minor else "major"
            category = Cat.PROBLEM_BEHAVIOR_MINOR if minor else Cat.PROBLEM_BEHAVIOR_MAJOR
            subtype = None
            firearm = False
            if behavior == "Harassment" or (behavior == "Bullying" and rand() < 0.4):
                subtype = self.descriptor(
                    Cat.HARASSMENT_TYPE,
                    rng.choices(["Race", "Sex", "Sexual Orientation", "Religion", "Disability",
                                 "National Origin", "Other"],
                                cum_weights=[25, 50, 65, 72, 82, 90, 100])[0],
                )  # fmt: skip
            elif behavior == "Weapons":
                kind = rng.choices(["Knife or Blade", "Other Object Used as a Weapon", "Other",
                                    "Firearm"], cum_weights=[55, 85, 96, 100])[0]  # fmt: skip
                firearm = kind == "Firearm"
                subtype = (self.descriptor(Cat.FIREARM_TYPE, "Handgun") if firearm
                           else self.descriptor(Cat.WEAPON_TYPE, kind))  # fmt: skip
            police = rand() < LAW_ENFORCEMENT_RATE.get(behavior, 0.0) if not minor else False
            arrest = police and rand() < 0.3
            restraint = "none"
            if not minor and behavior == "Fighting/Physical Aggression" and st.stage != HIGH:
                r = rand()
                if r < (0.04 if st.idea else 0.01):
                    restraint = "physical"
                elif r < (0.05 if st.idea else 0.011) and st.stage == ELEMENTARY:
                    restraint = "seclusion"
            idea_removal = "none"
            if st.idea and not minor:
                if behavior in ("Weapons", "Drugs") and rand() < 0.5:
                    idea_removal = "school_personnel"
                elif rand() < 0.002:
                    idea_removal = "hearing_officer"
            position = len(incidents)
            created = self._utc(day, at) + timedelta(minutes=20 + int(rand() * 70))
            primary = self._actions(created, position, day, di, minor, behavior, firearm, st,
                                    actions)  # fmt: skip
            services_after = st.idea and (
                primary in EXPULSIONS or primary == "Out-of-School Suspension"
                or idea_removal != "none"
            ) and rand() < 0.7  # fmt: skip
            narrative = rng.choice(NARRATIVES.get(behavior, GENERIC_NARRATIVE))
            follow = rng.choice(FOLLOW_UPS)
            incidents.append((
                created, st.id, self.schools[st.school].pk, reporter, day, at, level,
                self.descriptor(category, behavior), subtype, self.descriptor(Cat.LOCATION,
                location),
                self.descriptor(Cat.MOTIVATION, _MOTIVATION.pick(rng)) if rand() < 0.85 else None,
                self.descriptor(Cat.OTHERS_INVOLVED, _OTHERS.pick(rng)) if rand() < 0.8 else None,
                restraint, police, arrest, firearm, idea_removal, services_after,
                f"{narrative} {follow}".strip(),
            ))  # fmt: skip
            self._participants(created, position, behavior, st.id, school_students, participants)
            if n == 3 or (n == len(chosen) - 1 and n < 3):
                st.key_date = day
        st.top_behavior = behaviors.most_common(1)[0][0]

    def _actions(self, created, position: int, day: date, di: int, minor: bool, behavior: str,
                 firearm: bool, st: _Student, actions: list) -> str:  # fmt: skip
        rng = self.rng
        rand = rng.random
        if minor:
            primary = _MINOR_ACTION.pick(rng)
        elif firearm or (behavior == "Weapons" and rand() < 0.3) or (
            behavior in ("Drugs", "Arson", "Bomb Threat/False Alarm") and rand() < 0.08
        ):  # fmt: skip
            with_services = st.idea or rand() < 0.5
            primary = "Expulsion with services" if with_services else "Expulsion without services"
        elif behavior in ("Drugs", "Weapons") and rand() < 0.05:
            primary = "Alternative Placement"
        elif behavior in ("Property Damage", "Theft") and rand() < 0.25:
            primary = "Restitution"
        elif di >= len(self.days) - 2 and rand() < 0.35:
            primary = "Action Pending"
        else:
            primary = (_MAJOR_ACTION_SEVERE if behavior in SEVERE else _MAJOR_ACTION).pick(rng)
            if primary == "Out-of-School Suspension" and st.stage == ELEMENTARY and rand() < 0.6:
                primary = "In-School Suspension"  # elementary schools rarely send children home
        chosen = [primary]
        # Removals almost always come with a call home; office time often does.
        parent_call = 0.85 if primary in SUSPENSIONS | EXPULSIONS else 0.0
        parent_call = 0.4 if primary == "Time in Office" else parent_call
        if rand() < parent_call:
            chosen.append("Parent Contact")
        for action in chosen:
            duration, start, end = "0", day, day
            if action == "Action Pending":
                start = end = None
            elif action in SUSPENSIONS or action in EXPULSIONS:
                if action == "In-School Suspension":
                    duration = rng.choice(ISS_DAYS)
                elif action == "Out-of-School Suspension":
                    serious = behavior in ("Weapons", "Drugs", "Fighting/Physical Aggression")
                    duration = rng.choice(OSS_DAYS_SERIOUS if serious and rand() < 0.3
                                          else OSS_DAYS)  # fmt: skip
                else:
                    duration = rng.choice(EXPULSION_DAYS)
                # Removals start the next school day unless the incident was in the morning.
                first = self.day_index[day] + (0 if rand() < 0.3 else 1)
                days_long = math.ceil(float(duration))
                last = min(len(self.all_days) - 1, first + days_long - 1)
                start, end = self.all_days[first], self.all_days[last]
            actions.append((created, position, self.descriptor(Cat.ACTION, action), duration,
                            start, end))  # fmt: skip
        return primary

    def _participants(self, created, position: int, behavior: str, student_id: int,
                      school_students: list[int], participants: list) -> None:  # fmt: skip
        rand = self.rng.random
        roles: list[str] = []
        if behavior == "Fighting/Physical Aggression":
            if rand() < 0.7:
                roles.append("perpetrator")
            if rand() < 0.15:
                roles.append("witness")
        elif behavior in ("Harassment", "Bullying"):
            if rand() < 0.9:
                roles.append("victim")
            if rand() < 0.2:
                roles.append("witness")
        elif behavior in ("Physical Contact", "Theft"):
            if rand() < 0.3:
                roles.append("victim")
        elif rand() < 0.03:
            roles.append("witness")
        if not roles or len(school_students) < 3:
            return
        others = self.rng.sample(school_students, min(len(school_students), len(roles) + 1))
        others = [o for o in others if o != student_id][: len(roles)]
        for role, other in zip(roles, others, strict=False):
            participants.append((created, position, other, role))

    # -- phase 6: support requests and interventions ------------------------------------------

    def support(self) -> None:
        plan, rng = self.plan, self.rng
        n_bsr = max(len(BSR_STATE_WEIGHTS), round(plan.students * 0.04))
        bar = _progress(f"{plan.code}: support requests", 2, "step", self.show)
        referred = [s for s in self.students if s.referrals >= 3]
        quiet = [s for s in self.students if s.referrals < 3]
        k_hi = min(len(referred), round(n_bsr * 0.75))
        chosen = rng.sample(referred, k_hi) + rng.sample(quiet, min(len(quiet), n_bsr - k_hi))
        user_of = {s.id: s.user_id for s in self.staff if s.user_id}
        bsr_rows, histories = [], []
        # Every state is shown at least once (small districts too); the rest follow the weights.
        states = list(BSR_STATE_WEIGHTS)
        for n, st in enumerate(chosen):
            state = states[n] if n < len(states) else _BSR_STATE.pick(rng)
            bsr, history = self._bsr(st, state, user_of)
            bsr_rows.append(bsr)
            histories.append(history)
        ids = self.writer.insert(
            BehaviorSupportRequest,
            ("student_id", "school_id", "requested_by_id", "concern", "state", "priority",
             "assignee_id", "submitted_at", "due_at", "closed_at", "resolution"),
            bsr_rows,
        )  # fmt: skip
        self.writer.insert(
            BsrTransition,
            ("request_id", "from_state", "to_state", "actor_id", "note", "at"),
            [(t[0], pk, *t[1:]) for pk, history in zip(ids, histories, strict=True)
             for t in history],
        )  # fmt: skip
        bar.update()
        self._interventions()
        bar.update()
        bar.close()

    def _school_staff(self, school: int, *positions: str) -> list[_Staff]:
        return [s for p in positions for s in self.staff_at.get((school, p), [])]

    def _bsr(self, st: _Student, state: str, user_of: dict[int, int]) -> tuple[tuple, list]:
        rng = self.rng
        path = rng.choice(BSR_PATHS[state])
        teachers = [self.staff[self.sections[i].teacher] for i in
                    self.cohorts[st.cohort].sections.values()]  # fmt: skip
        requester = rng.choice(teachers)
        helpers = self._school_staff(st.school, StaffPosition.COUNSELOR,
                                     StaffPosition.ASSISTANT_PRINCIPAL)  # fmt: skip
        leaders = self._school_staff(st.school, StaffPosition.PRINCIPAL,
                                     StaffPosition.ASSISTANT_PRINCIPAL)  # fmt: skip
        assignee = rng.choice(helpers) if helpers else None
        triager = rng.choice(leaders)
        # Triage sets the priority; a request escalated or closed (a duplicate) straight from
        # submission never got one.
        priority = None
        if "triaged" in path:
            priority = rng.choices([1, 2, 3, 4], cum_weights=[8, 30, 75, 100])[0]
        # Open requests are recent; closed ones spread over the fall.
        open_state = state in bchoices.OPEN_BSR_STATES
        window = [d for d in self.days if d >= (date(2026, 11, 9) if open_state else
                                               date(2026, 8, 31))]  # fmt: skip
        if not open_state:
            window = [d for d in window if d <= date(2026, 11, 13)]
        submitted = self._utc(rng.choice(window), time(7 + rng.randrange(8), rng.randrange(60)))
        due = submitted + BehaviorSupportRequest.DUE_AFTER[priority] if priority else None
        behavior = (st.top_behavior or "concerns").lower()
        concern = rng.choice(BSR_CONCERNS).format(behavior=behavior)
        at, history = submitted, []
        limit = self._utc(DATA_END, time(17, 0))
        for previous, to_state in itertools.pairwise(("", *path)):
            if to_state == "submitted":
                actor, note = user_of.get(requester.id), "Submitted"
            elif to_state == "triaged":
                at += timedelta(hours=rng.uniform(0.5, 20))
                actor = user_of.get(triager.id)
                note = f"Priority {priority}; assigned to {assignee.first} {assignee.last}" \
                    if assignee else f"Priority {priority}"  # fmt: skip
            elif to_state == "escalated" and previous == "submitted":
                at += timedelta(hours=rng.uniform(0.2, 2))
                actor, note = user_of.get(triager.id), "Safety concern: escalated on arrival"
            elif to_state == "escalated":
                at = max(at + timedelta(hours=1), (due or at) + timedelta(hours=rng.uniform(1, 6)))
                # The overdue sweep runs as the system actor.
                actor, note = self.actor.pk, "Overdue: escalated to the school's leadership"
            elif to_state == "in_progress":
                at += timedelta(hours=rng.uniform(4, 48))
                actor = user_of.get(assignee.id) if assignee else None
                note = "Observation scheduled; family contacted"
            elif to_state == "resolved":
                at += timedelta(days=rng.uniform(2, 15))
                actor = user_of.get(assignee.id) if assignee else None
                note = rng.choice(BSR_RESOLUTIONS)
            else:  # closed_no_action
                at += timedelta(hours=rng.uniform(1, 48))
                actor = user_of.get(triager.id)
                note = (
                    "Duplicate of an open request"
                    if previous == "submitted"
                    else "Handled in class; no further action needed"
                )
            history.append([previous, to_state, actor, note, at])
        # Keep the whole history inside the recorded fall: shift it back if it runs past.
        overshoot = history[-1][4] - limit
        if overshoot > timedelta(0):
            for step in history:
                step[4] -= overshoot
            submitted -= overshoot
            due = due - overshoot if due else None
        closed = history[-1][4] if not open_state else None
        resolution = history[-1][3] if not open_state else ""
        row = (
            submitted, st.id, self.schools[st.school].pk, requester.id, concern, state, priority,
            assignee.id if assignee and priority else None, submitted, due, closed,
            resolution,
        )  # fmt: skip
        return row, [(step[4], *step[:4], step[4]) for step in history]

    def _interventions(self) -> None:
        rng = self.rng
        notes_field = Intervention._meta.get_field("confidential_notes")
        rows = []
        # MTSS proportions: tier 3 for about the top 4% by referrals, tier 2 for the next 11%
        # (most of them), tier 1 plans for a few others.
        n = len(self.students)
        ranked = sorted(
            (s for s in self.students if s.referrals), key=lambda s: (-s.referrals, s.index)
        )
        rank = {s.index: r for r, s in enumerate(ranked)}
        for st in self.students:
            r = rank.get(st.index, n)
            if r < 0.04 * n:
                tier = 3 if rng.random() < 0.75 else 2
            elif r < 0.15 * n:
                tier = 2 if rng.random() < 0.6 else 0
            else:
                tier = 1 if rng.random() < 0.03 else 0
            if not tier:
                continue
            kind = rng.choice(INTERVENTIONS_BY_TIER[tier])
            anchor = st.key_date or rng.choice(self.days[5:40])
            start_index = min(len(self.all_days) - 1, self.day_index[anchor] + rng.randrange(2, 8))
            start = self.all_days[start_index]
            if start > DATA_END:
                start = DATA_END
            planned = start + timedelta(weeks=rng.choice((6, 8, 10)))
            outcome, end = "ongoing", None
            if planned <= DATA_END or rng.random() < 0.08:
                outcome = rng.choices(
                    ["met", "partially_met", "not_met", "discontinued"],
                    cum_weights=[40, 75, 88, 100],
                )[0]
                end = min(planned, DATA_END)
                if end < start:
                    end = start
            staff = self._school_staff(
                st.school,
                StaffPosition.COUNSELOR,
                StaffPosition.ASSISTANT_PRINCIPAL,
                StaffPosition.SUPPORT,
            )
            notes = ""
            if tier >= 2 and rng.random() < 0.4:
                notes = notes_field.get_prep_value(rng.choice(CONFIDENTIAL_NOTES))
            rows.append((
                self._utc(start, time(10, 0)), st.id, self.schools[st.school].pk, tier,
                self.descriptor(Cat.INTERVENTION_TYPE, kind),
                rng.choice(staff).id if staff else None, start, planned, end,
                rng.randrange(55, 101), outcome, rng.choice(INTERVENTION_GOALS), notes,
            ))  # fmt: skip
        self.writer.insert(
            Intervention,
            ("student_id", "school_id", "tier", "intervention_type_id", "staff_id", "start_date",
             "planned_end_date", "end_date", "fidelity_pct", "outcome", "goal",
             "confidential_notes"),
            rows,
        )  # fmt: skip

    # -- phase 7: a few live writes through the services --------------------------------------

    def live(self) -> None:
        """A handful of referrals and requests made the normal way, as staff would today."""
        teacher = self.login_staff.get("teacher")
        counselor = self.login_staff.get("counselor")
        if not teacher:
            return
        staff = Staff.objects.get(pk=teacher.id)
        school = self.schools[teacher.schools[0]]
        section_ids = [self.sections[i].id for i in teacher.sections]
        students = list(
            Student.objects.filter(section_enrollments__section_id__in=section_ids)
            .distinct()
            .order_by("student_number")[:3]
        )
        classroom = Descriptor.objects.get(district=None, category=Cat.LOCATION,
                                           code=code_for("Classroom"))  # fmt: skip
        for student, behavior, at in zip(
            students,
            ("Technology Violation", "Tardy", "Disruption"),
            (time(9, 12), time(10, 5), time(13, 40)),
            strict=False,
        ):
            incident = behavior_services.incident_create(
                actor=self.actor,
                student=student,
                school=school,
                reported_by=staff,
                occurred_on=DATA_END,
                occurred_at=at,
                level=bchoices.IncidentLevel.MINOR,
                problem_behavior=Descriptor.objects.get(
                    district=None, category=Cat.PROBLEM_BEHAVIOR_MINOR, code=code_for(behavior)
                ),
                location=classroom,
                narrative=NARRATIVES.get(behavior, GENERIC_NARRATIVE)[0],
                source_system=SOURCE_SYSTEM,
            )
            model_create(
                model=IncidentAction,
                actor=self.actor,
                data={
                    "district_id": incident.district_id,
                    "incident": incident,
                    "action": Descriptor.objects.get(
                        district=None, category=Cat.ACTION, code=code_for("Conference with Student")
                    ),
                    "start_date": DATA_END,
                    "end_date": DATA_END,
                    "source_system": SOURCE_SYSTEM,
                },
            )
            self.counts[Incident._meta.label] += 1
            self.counts[IncidentAction._meta.label] += 1
        if students:
            behavior_services.bsr_submit(
                actor=self.actor,
                student=students[0],
                school=school,
                requested_by=staff,
                concern="Phone use keeps pulling the student out of lessons; asking for ideas "
                "beyond taking the phone.",
            )
            self.counts[BehaviorSupportRequest._meta.label] += 1
            self.counts[BsrTransition._meta.label] += 1
        if counselor:
            middle = counselor.schools[0]
            here = [s for s in self.students if s.school == middle]
            member = next((s for s in here if s.referrals >= 3), here[0])
            requester = self.staff[self.sections[next(iter(
                self.cohorts[member.cohort].sections.values()))].teacher]  # fmt: skip
            bsr = behavior_services.bsr_submit(
                actor=self.actor,
                student=Student.objects.get(pk=member.id),
                school=self.schools[middle],
                requested_by=Staff.objects.get(pk=requester.id),
                concern="Several conflicts with peers at lunch this week; requesting a check-in.",
            )
            behavior_services.bsr_transition(
                actor=self.actor,
                bsr=bsr,
                to_state=bchoices.BsrState.TRIAGED,
                priority=2,
                assignee=Staff.objects.get(pk=counselor.id),
                note="Priority 2; counselor to meet the student",
            )
            self.counts[BehaviorSupportRequest._meta.label] += 1
            self.counts[BsrTransition._meta.label] += 2


def _letter(score: float) -> str:
    for floor, letter in ((93, "A"), (90, "A-"), (87, "B+"), (83, "B"), (80, "B-"), (77, "C+"),
                          (73, "C"), (70, "C-"), (67, "D+"), (63, "D"), (60, "D-")):  # fmt: skip
        if score >= floor:
            return letter
    return "F"


def _time_for(location: str, rng: random.Random) -> time:
    """A time of day typical for the place: bus runs, lunch, recess, or the class-day profile."""
    r = rng.random()
    if location in ("Bus", "Bus Loading Zone", "Parking Lot"):
        start = 7 * 60 + 15 if r < 0.6 else 15 * 60 + 5
        minutes = start + rng.randrange(40)
    elif location == "Cafeteria":
        minutes = 11 * 60 + rng.randrange(110)
    elif location == "Playground":
        start = 10 * 60 if r < 0.3 else 11 * 60 + 45 if r < 0.9 else 13 * 60 + 45
        minutes = start + rng.randrange(20 if start == 10 * 60 else 45 if r < 0.9 else 15)
    else:
        bin_index = rng.choices(range(len(CLASSROOM_BINS)), cum_weights=_CLASSROOM_CUM)[0]
        minutes = 8 * 60 + bin_index * 15 + rng.randrange(15)
    return time(minutes // 60, minutes % 60)


_CLASSROOM_CUM = list(itertools.accumulate(CLASSROOM_BINS))


def _secondary_courses(grade: str, stage: int, rng: random.Random) -> list[tuple[str, ...]]:
    """(department, course code, title, session) for the seven periods of a cohort."""
    g = int(grade)
    elective = rng.choice(
        [("ART1", "Art I"), ("BAND", "Band"), ("CHOIR", "Choir"), ("CSP", "Computer Science"),
         ("THTR", "Theater"), ("STEM", "STEM Lab")]
        + ([("JOUR", "Journalism"), ("CULN", "Culinary Arts"), ("AUTO", "Automotive Technology"),
            ("PSYC", "Psychology")] if stage == HIGH else [])
    )  # fmt: skip
    if stage == MIDDLE:
        social = {6: "World Geography", 7: "World History", 8: "U.S. History"}[g]
        return [
            ("ELA", f"ELA{g:02d}", f"English Language Arts {g}", "year"),
            ("MATH", f"MATH{g:02d}", "Pre-Algebra" if g == 8 else f"Math {g}", "year"),
            ("SCI", f"SCI{g:02d}", f"Science {g}", "year"),
            ("SS", f"SS{g:02d}", social, "year"),
            ("PE", f"PE{g:02d}", "Physical Education", "year"),
            ("WL", "SPA1M" if g == 8 else "EXWL", "Spanish I" if g == 8
             else "Exploring World Languages", "year"),
            ("ELECT", f"{elective[0]}M", elective[1], "fall"),
        ]  # fmt: skip
    math_course = {9: "Algebra I", 10: "Geometry", 11: "Algebra II", 12: "Pre-Calculus"}[g]
    science = {9: "Biology", 10: "Chemistry", 11: "Physics", 12: "Environmental Science"}[g]
    social = {9: "Global Studies", 10: "World History", 11: "U.S. History",
              12: "Government & Economics"}[g]  # fmt: skip
    pe = {9: "Physical Education", 10: "Health", 11: "Fitness & Wellness", 12: "Fitness & Wellness"}
    language = rng.choice(("SPA", "FRE"))
    level = ("I", "II", "III", "IV")[g - 9]
    return [
        ("ELA", f"ENG{g:02d}", f"English {g}", "year"),
        ("MATH", code_for(math_course).upper().replace("-", "")[:8], math_course, "year"),
        ("SCI", science[:4].upper(), science, "year"),
        ("SS", f"SS{g:02d}", social, "year"),
        ("PE", f"PE{g:02d}", pe[g], "year"),
        ("WL", f"{language}{g - 8}", f"{'Spanish' if language == 'SPA' else 'French'} {level}",
         "year"),
        ("ELECT", elective[0], elective[1], "fall"),
    ]  # fmt: skip


def _split_evenly(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _split(items: list[int], parts: int) -> list[list[int]]:
    sizes = _split_evenly(len(items), parts)
    out, start = [], 0
    for size in sizes:
        out.append(items[start : start + size])
        start += size
    return out


def _bands(by_grade: list[tuple[str, list[int]]], minimum: int = 12):
    """Group consecutive grades until a class has ``minimum`` students (small schools)."""
    bands: list[tuple[tuple[str, ...], list[int]]] = []
    grades: list[str] = []
    students: list[int] = []
    for grade, members in by_grade:
        grades.append(grade)
        students.extend(members)
        if len(students) >= minimum:
            bands.append((tuple(grades), students))
            grades, students = [], []
    if students:
        if bands:
            last_grades, last_students = bands.pop()
            bands.append(((*last_grades, *grades), last_students + students))
        else:
            bands.append((tuple(grades), students))
    return bands


# --- deleting the demo districts ------------------------------------------------------------


def _delete_rows(model: type[models.Model], where: str, params: list, actor, deleted: Counter,
                 audit: bool = True) -> int:  # fmt: skip
    """Delete matching rows in id-range chunks, one audit entry per chunk.

    Raw SQL, because the ORM would load every row and write one audit entry each; the tombstone
    trigger still records every deleted row of a tenant table.
    """
    table = _quote(model._meta.db_table)
    total = 0
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT min(id), max(id) FROM {table} WHERE {where}", params)
        low, high = cursor.fetchone()
        if low is None:
            return 0
        for start in range(low, high + 1, DELETE_SPAN):
            cursor.execute(
                f"DELETE FROM {table} WHERE ({where}) AND id >= %s AND id < %s RETURNING id",
                [*params, start, start + DELETE_SPAN],
            )
            ids = [row[0] for row in cursor.fetchall()]
            if ids and audit:
                audit_bulk(model=model, action=LogEntry.Action.DELETE, object_ids=ids,
                           actor=actor, note=f"{AUDIT_NOTE}: reset")  # fmt: skip
            total += len(ids)
    deleted[model._meta.label] += total
    return total


def _delete_district(district: District, actor, deleted: Counter) -> None:
    """Delete one district and everything in it, children first."""
    did = [district.pk]
    by_district = "district_id = %s"

    def of(model: type[models.Model], column: str) -> str:
        return f"{column} IN (SELECT id FROM {_quote(model._meta.db_table)} WHERE district_id = %s)"

    known = [
        BsrTransition,
        Intervention,
        BehaviorSupportRequest,
        IncidentParticipant,
        IncidentAction,
        Incident,
        Grade,
        PeriodAttendance,
        DailyAttendance,
        SectionEnrollment,
    ]
    core = {*known, Section, Enrollment, StudentDemographic, StudentGuardian, Guardian, Student,
            Staff, AcademicSession, School}  # fmt: skip
    # Tables of other apps first (they point at ours); retry while their own order settles.
    pending = [m for m in tracked_models() if m not in core]
    while pending:
        failed = []
        for model in pending:
            try:
                with transaction.atomic():
                    _delete_rows(model, by_district, did, actor, deleted)
            except DatabaseError:
                failed.append(model)
        if len(failed) == len(pending):
            break  # stuck: the next delete raises the real error
        pending = failed
    for model in known:
        _delete_rows(model, by_district, did, actor, deleted)
    for model in pending:  # a last try now that the behavior tables are empty
        _delete_rows(model, by_district, did, actor, deleted)
    _delete_rows(SectionUserObjectPermission, of(Section, "content_object_id"), did, actor,
                 deleted)  # fmt: skip
    _delete_rows(Section, by_district, did, actor, deleted)
    for model in (Enrollment, StudentDemographic, StudentGuardian, Guardian):
        _delete_rows(model, by_district, did, actor, deleted)
    _delete_rows(StudentUserObjectPermission, of(Student, "content_object_id"), did, actor,
                 deleted)  # fmt: skip
    _delete_rows(Student, by_district, did, actor, deleted)
    # The staff-school links go with their staff rows (audited next); the auto-created link
    # model has no content type to audit under.
    _delete_rows(Staff.schools.through, of(Staff, "staff_id"), did, actor, deleted, audit=False)
    user_ids = list(
        Staff.objects.filter(district=district, user__isnull=False).values_list(
            "user_id", flat=True
        )
    )
    _delete_rows(Staff, by_district, did, actor, deleted)
    if user_ids:
        User.objects.filter(pk__in=user_ids, is_superuser=False).delete()
        deleted["common.User"] += len(user_ids)
    # Sessions nest (grading periods in semesters in the year): leaves first.
    sessions = AcademicSession.objects.filter(district=district)
    while sessions.exists():
        leaves = sessions.exclude(pk__in=AcademicSession.objects.filter(parent__isnull=False)
                                  .values("parent_id"))  # fmt: skip
        ids = list(leaves.values_list("pk", flat=True))
        _delete_rows(AcademicSession, "id = ANY(%s)", [ids], actor, deleted)
    _delete_rows(SchoolUserObjectPermission, of(School, "content_object_id"), did, actor,
                 deleted)  # fmt: skip
    _delete_rows(Descriptor, by_district, did, actor, deleted)
    _delete_rows(School, by_district, did, actor, deleted)
    with acting_as(actor):  # see seed_demo: the ORM delete is audited from the context
        district.delete()
    deleted[District._meta.label] += 1


def delete_demo_data(*, actor, codes: Sequence[str] = DEMO_DISTRICTS) -> Counter:
    """Delete the demo districts (each in its own transaction). Returns rows deleted per table."""
    deleted: Counter = Counter()
    for district in District.objects.filter(code__in=codes).order_by("code"):
        with transaction.atomic(), acting_as(actor):
            _immediate_constraints()
            _delete_district(district, actor, deleted)
            _deferred_constraints()
    return deleted


def _immediate_constraints() -> None:
    # Foreign keys are DEFERRABLE INITIALLY DEFERRED: millions of queued checks would pile up in
    # server memory until commit. Checking at the end of each COPY keeps the queue per batch.
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def _deferred_constraints() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")


# --- the entry point ------------------------------------------------------------------------


def seed_demo(
    *,
    actor,
    students: int = DEFAULT_STUDENTS,
    seed: int = DEFAULT_SEED,
    password: str = DEMO_PASSWORD,
    reset: bool = False,
    progress: bool = True,
) -> SeedReport:
    """Create the demo districts that are missing (all of them again with ``reset``).

    A district that already exists is left untouched unless ``reset``; each district is
    written (and, with ``reset``, first deleted) in its own transaction.
    """
    if students < MIN_STUDENTS:
        raise ValueError(f"students must be at least {MIN_STUDENTS}")
    started = clock.perf_counter()
    report = SeedReport(password=password)
    password_hash = make_password(password)
    for plan in (lincoln_plan(students), riverside_plan()):
        existing = District.objects.filter(code=plan.code).first()
        if existing and not reset:
            report.present.append(plan.code)
            continue
        # A fresh actor context per district: auditlog's context does not survive the nested
        # acting_as of the services, so ORM-audited writes here would lose their actor.
        with transaction.atomic(), acting_as(actor):
            _immediate_constraints()
            if existing:
                _delete_district(existing, actor, report.deleted)
            builder = _DistrictBuilder(
                plan, seed=seed, actor=actor, password_hash=password_hash, progress=progress,
                counts=report.counts,
            )  # fmt: skip
            builder.setup()
            builder.people()
            builder.schedule()
            builder.create_logins()
            builder.activity()
            builder.support()
            builder.live()
            if plan.code == "lincoln":
                report.admin_created = _ensure_superuser(password_hash)
            _deferred_constraints()
        report.created.append(plan.code)
    existing_users = set(
        User.objects.filter(username__in=[u for u, _ in DEMO_LOGINS]).values_list(
            "username", flat=True
        )
    )
    report.logins = [(u, text, u in existing_users) for u, text in DEMO_LOGINS]
    report.seconds = clock.perf_counter() - started
    return report


def _ensure_superuser(password_hash: str) -> bool:
    """Create the platform superuser ``admin`` if missing. Returns whether it was created.

    An existing ``admin`` keeps its password: it may be a developer's own account.
    """
    if User.objects.filter(username="admin").exists():
        return False
    User.objects.create(
        username="admin",
        email="admin@example.org",
        first_name="Platform",
        last_name="Admin",
        is_staff=True,
        is_superuser=True,
        password=password_hash,
    )
    return True
