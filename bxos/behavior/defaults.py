"""The shipped code lists (shared/design/DOMAIN.md), loaded by a data migration.

Districts add their own entries in the admin; these rows (district empty) are shared by all.
"""

from django.utils.text import slugify

from bxos.behavior.choices import DescriptorCategory as Cat

DEFAULTS: dict[str, list[str]] = {
    Cat.PROBLEM_BEHAVIOR_MINOR: [
        "Defiance",
        "Disrespect",
        "Disruption",
        "Dress",
        "Inappropriate Language",
        "Physical Contact",
        "Property Misuse",
        "Tardy",
        "Technology Violation",
        "Other",
    ],
    Cat.PROBLEM_BEHAVIOR_MAJOR: [
        "Abusive/Inappropriate Language",
        "Arson",
        "Bomb Threat/False Alarm",
        "Defiance",
        "Disrespect",
        "Disruption",
        "Dress Code",
        "Fighting/Physical Aggression",
        "Gang Display",
        "Harassment",
        "Bullying",
        "Inappropriate Affection",
        "Out of Bounds",
        "Property Damage",
        "Skip/Truancy",
        "Tardy",
        "Technology",
        "Alcohol",
        "Combustibles",
        "Drugs",
        "Tobacco",
        "Weapons",
        "Theft",
        "Lying",
        "Academic Dishonesty",
        "Other",
    ],
    Cat.HARASSMENT_TYPE: [
        "Race",
        "Sex",
        "Sexual Orientation",
        "Religion",
        "Disability",
        "National Origin",
        "Other",
    ],
    Cat.WEAPON_TYPE: ["Firearm", "Knife or Blade", "Other Object Used as a Weapon", "Other"],
    Cat.FIREARM_TYPE: ["Handgun", "Rifle or Shotgun", "Other Firearm"],
    Cat.LOCATION: [
        "Classroom",
        "Hallway",
        "Cafeteria",
        "Playground",
        "Bus",
        "Bus Loading Zone",
        "Bathroom",
        "Office",
        "Gym",
        "Library",
        "Locker Room",
        "Parking Lot",
        "Field Trip",
        "Special Event/Assembly",
        "Other",
    ],
    Cat.MOTIVATION: [
        "Obtain peer attention",
        "Obtain adult attention",
        "Obtain items/activities",
        "Avoid peer(s)",
        "Avoid adult(s)",
        "Avoid task/activity",
        "Unknown",
    ],
    Cat.OTHERS_INVOLVED: ["None", "Peers", "Staff", "Teacher", "Substitute", "Unknown", "Other"],
    Cat.ACTION: [
        "Time in Office",
        "Loss of Privilege",
        "Conference with Student",
        "Parent Contact",
        "Individualized Instruction",
        "In-School Suspension",
        "Out-of-School Suspension",
        "Detention",
        "Expulsion with services",
        "Expulsion without services",
        "Restitution",
        "Community Service",
        "Alternative Placement",
        "Action Pending",
        "Other",
    ],
    Cat.INTERVENTION_TYPE: [
        "Check-in/Check-out",
        "Social Skills Group",
        "Behavior Plan",
        "Counseling",
        "Mentoring",
        "Function-based Support",
        "Academic Support",
        "Family Engagement Plan",
    ],
}


def code_for(label: str) -> str:
    return slugify(label.replace("/", " "))[:64]


def load_defaults(Descriptor) -> int:
    """Create the missing shared entries; safe to run again. Returns how many it created."""
    created = 0
    for category, labels in DEFAULTS.items():
        for order, label in enumerate(labels):
            _, was_created = Descriptor.objects.get_or_create(
                district=None,
                category=str(category),
                code=code_for(label),
                defaults={"label": label, "sort_order": order * 10},
            )
            created += was_created
    return created
