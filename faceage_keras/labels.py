"""Label conventions shared by data, models and evaluation.

Ages are in years. Training targets and metrics use ages clipped to
`[MIN_AGE, MAX_AGE]`, because the thesis recipe clips ages at 75 so that the
few very old faces do not dominate the squared error. Gender is coded
0 = male, 1 = female.
"""

import numpy as np

MIN_AGE = 0.0
MAX_AGE = 75.0

# Upper bounds (exclusive) of the first four groups; the last group is open.
AGE_GROUP_UPPER_BOUNDS = (19, 30, 40, 60)
AGE_GROUP_LABELS = ("<19", "19-29", "30-39", "40-59", "60+")
AGE_GROUP_NAMES = ("Child", "Young", "Young Adult", "Middle Age", "Elderly")
# Age used for a face assigned to a group, as in the thesis.
AGE_GROUP_CENTRES = (9.0, 24.0, 34.0, 49.0, 70.0)
NUM_AGE_GROUPS = len(AGE_GROUP_LABELS)

MALE = 0
FEMALE = 1
GENDER_NAMES = ("male", "female")

# Accepted spellings of gender in metadata files, compared case-insensitively.
GENDER_SPELLINGS = {
    "male": MALE,
    "m": MALE,
    "0": MALE,
    "female": FEMALE,
    "f": FEMALE,
    "1": FEMALE,
}


def clip_age(age):
    """Clip ages in years to the range used for targets and metrics."""
    return np.clip(np.asarray(age, dtype="float32"), MIN_AGE, MAX_AGE)


def age_to_group(age):
    """Map ages in years to age-group indices 0-4 (<19, 19-29, 30-39, 40-59, 60+)."""
    return np.searchsorted(AGE_GROUP_UPPER_BOUNDS, np.asarray(age), side="right").astype("int64")


def parse_gender(value):
    """Return 0 (male) or 1 (female) for an accepted spelling, else None."""
    text = str(value).strip().lower()
    if text.endswith(".0"):
        text = text[:-2]
    return GENDER_SPELLINGS.get(text)


def parse_age_group(value):
    """Return the group index for `0`-`4` or a label such as `19-29`, else None."""
    text = str(value).strip().replace("–", "-").replace(" ", "")
    if text.endswith(".0"):
        text = text[:-2]
    if text.isdigit() and int(text) < NUM_AGE_GROUPS:
        return int(text)
    if text in AGE_GROUP_LABELS:
        return AGE_GROUP_LABELS.index(text)
    return None


def group_centre_ages(group_probabilities):
    """Return the centre age of the most probable group for each row."""
    indices = np.argmax(np.asarray(group_probabilities), axis=-1)
    return np.asarray(AGE_GROUP_CENTRES, dtype="float32")[indices]


def expected_ages(group_probabilities):
    """Return the expectation of the group centres under each row's group distribution."""
    return np.asarray(group_probabilities, dtype="float32") @ np.asarray(AGE_GROUP_CENTRES, dtype="float32")
