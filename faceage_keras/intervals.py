"""Age intervals with a nominal coverage, calibrated on a run's validation faces.

Both kinds of model get an equal-tailed interval: with the nominal coverage
0.8, about 10% of faces should be younger than the interval and 10% older.
Ages are on the clipped 0-75 scale of training and metrics, so an upper end
of 75 means "75 or older".

Regression models (m1, m2, m5): the interval is the predicted age plus the
low and high quantiles of the validation residuals (true minus predicted age)
of faces with a similar prediction. The residuals are grouped into bins of
predicted age, 5 years wide at first. A bin with fewer than
`min_bin_faces` faces is merged with its smaller neighbour until every bin
has enough. The quantiles are order statistics at the conformal ranks
`floor(alpha * (n + 1))` and `n + 1 - floor(alpha * (n + 1))` with
`alpha = (1 - coverage) / 2`, so each tail misses at most `alpha` of the
faces when validation and new faces come from the same source.

Group models (m3, m4): the predicted age distribution is a mixture. It
weighs the age distribution of the training faces of each group by the
group's predicted probability. The interval runs between two quantiles of
that mixture. Their levels start at `alpha` and `1 - alpha` and are
recalibrated on the validation faces: the low level is set so that a share
`alpha` of validation faces falls below the interval, and likewise for the
high level. This corrects group probabilities that are too confident or too
flat, as a model trained for a few epochs often gives.
"""

import dataclasses
import math

import numpy as np

from faceage_keras import labels

NOMINAL_COVERAGE = 0.8
# Initial width, in years, of the bins of predicted age for regression residuals.
BIN_WIDTH = 5.0
# Minimum number of validation faces per bin. With 100 residuals the 10th and 90th
# percentiles each miss by about 3 points of coverage (binomial standard error).
MIN_BIN_FACES = 100
# Lower bounds of the five age groups on the clipped age scale.
GROUP_LOWER_BOUNDS = (labels.MIN_AGE,) + tuple(float(bound) for bound in labels.AGE_GROUP_UPPER_BOUNDS)


def _check_coverage(coverage):
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"`coverage` must be in (0, 1). Received: coverage={coverage}")


def _conformal_rank(num_values, tail):
    """Return the 1-based rank of the order statistic that leaves at most `tail` below it."""
    return math.floor(tail * (num_values + 1))


@dataclasses.dataclass
class RegressionIntervals:
    """Intervals around a predicted age from validation residuals per bin of predicted age.

    Attributes:
        coverage: float. Nominal coverage.
        bin_edges: list of float. Inner edges of the bins of predicted age, in years.
        residuals: list of float arrays. Sorted residuals (true minus
            predicted age) of the validation faces in each bin.
    """

    coverage: float
    bin_edges: list
    residuals: list

    def _bins(self, age_pred):
        return np.searchsorted(np.asarray(self.bin_edges, dtype="float64"), age_pred, side="right")

    def offsets(self):
        """Return `(low, high)` arrays: the residual quantiles of each bin, -inf/inf when a bin is too small."""
        tail = (1.0 - self.coverage) / 2.0
        low, high = [], []
        for values in self.residuals:
            rank = _conformal_rank(len(values), tail)
            low.append(values[rank - 1] if rank >= 1 else -np.inf)
            high.append(values[len(values) - rank] if rank >= 1 else np.inf)
        return np.asarray(low, dtype="float64"), np.asarray(high, dtype="float64")

    def interval(self, age_pred):
        """Return `(low, high)` age arrays in years for predicted ages."""
        age_pred = np.asarray(age_pred, dtype="float64").reshape(-1)
        low_offsets, high_offsets = self.offsets()
        bins = self._bins(age_pred)
        low = np.clip(age_pred + low_offsets[bins], labels.MIN_AGE, labels.MAX_AGE)
        high = np.clip(age_pred + high_offsets[bins], labels.MIN_AGE, labels.MAX_AGE)
        return low, high

    def group_probabilities(self, age_pred):
        """Return (n, 5) probabilities of the age groups: shares of `age_pred` + the bin's residuals."""
        age_pred = np.asarray(age_pred, dtype="float64").reshape(-1)
        bins = self._bins(age_pred)
        probabilities = np.zeros((len(age_pred), labels.NUM_AGE_GROUPS))
        for index, (age, bin_index) in enumerate(zip(age_pred, bins)):
            ages = labels.clip_age(age + np.asarray(self.residuals[bin_index]))
            counts = np.bincount(labels.age_to_group(ages), minlength=labels.NUM_AGE_GROUPS)
            probabilities[index] = counts / counts.sum()
        return probabilities

    def to_dict(self):
        return {
            "method": "regression_residuals",
            "coverage": self.coverage,
            "bin_edges": [float(edge) for edge in self.bin_edges],
            "bin_faces": [len(values) for values in self.residuals],
            "residuals": [[round(float(value), 4) for value in values] for values in self.residuals],
        }

    @classmethod
    def from_dict(cls, values):
        residuals = [np.sort(np.asarray(bin_values, dtype="float64")) for bin_values in values["residuals"]]
        return cls(float(values["coverage"]), [float(edge) for edge in values["bin_edges"]], residuals)


def _merge_small_bins(edges, counts, min_faces):
    """Merge adjacent bins until every bin has `min_faces` faces or a single bin is left."""
    edges, counts = list(edges), list(counts)
    while len(counts) > 1 and min(counts) < min_faces:
        smallest = int(np.argmin(counts))
        if smallest == 0:
            neighbour = 1
        elif smallest == len(counts) - 1:
            neighbour = smallest - 1
        else:
            neighbour = smallest - 1 if counts[smallest - 1] <= counts[smallest + 1] else smallest + 1
        left = min(smallest, neighbour)
        counts[left] += counts.pop(left + 1)
        edges.pop(left)
    return edges


def fit_regression_intervals(age_pred, age_true, *, coverage=NOMINAL_COVERAGE, min_bin_faces=MIN_BIN_FACES):
    """Fit `RegressionIntervals` from validation predictions and true ages (both in years, clipped 0-75).

    Raises:
        ValueError: the inputs are empty, differ in length or are not finite.
    """
    _check_coverage(coverage)
    age_pred = labels.clip_age(age_pred).astype("float64").reshape(-1)
    age_true = labels.clip_age(age_true).astype("float64").reshape(-1)
    if len(age_pred) == 0 or len(age_pred) != len(age_true):
        raise ValueError(
            f"Need one true age per prediction and at least one face. "
            f"Received {len(age_pred)} predictions and {len(age_true)} true ages."
        )
    if not (np.isfinite(age_pred).all() and np.isfinite(age_true).all()):
        raise ValueError("Predicted and true ages must be finite numbers; found nan or inf.")

    initial_edges = np.arange(labels.MIN_AGE + BIN_WIDTH, labels.MAX_AGE, BIN_WIDTH)
    counts = np.bincount(np.searchsorted(initial_edges, age_pred, side="right"), minlength=len(initial_edges) + 1)
    edges = _merge_small_bins(initial_edges, counts, min_bin_faces)

    bins = np.searchsorted(np.asarray(edges), age_pred, side="right")
    residuals = [np.sort(age_true[bins == index] - age_pred[bins == index]) for index in range(len(edges) + 1)]
    return RegressionIntervals(coverage, [float(edge) for edge in edges], residuals)


@dataclasses.dataclass
class GroupIntervals:
    """Quantiles of a mixture of per-group age distributions, weighted by the group probabilities.

    Attributes:
        coverage: float. Nominal coverage.
        support: float array. Sorted ages that the per-group distributions put mass on.
        group_cdf: float array (5, len(support)). Cumulative share of each
            group's training faces up to each age of `support`.
        levels: tuple of float. Recalibrated low and high quantile levels.
    """

    coverage: float
    support: np.ndarray
    group_cdf: np.ndarray
    levels: tuple

    def _cdf(self, prob_group):
        return np.asarray(prob_group, dtype="float64") @ self.group_cdf

    def interval(self, prob_group):
        """Return `(low, high)` age arrays in years for (n, 5) group probabilities."""
        cdf = self._cdf(prob_group)
        level_low, level_high = self.levels
        # low: the first age whose cumulative mass exceeds the low level;
        # high: the first age whose cumulative mass reaches the high level.
        low_index = np.minimum((cdf <= level_low).sum(axis=1), len(self.support) - 1)
        high_index = np.minimum((cdf < level_high).sum(axis=1), len(self.support) - 1)
        return self.support[low_index], self.support[high_index]

    def tail_scores(self, prob_group, age_true):
        """Return the mixture's mass at or below, and strictly below, each true age.

        A face falls below its interval when the first score is at most the
        low level, and above it when the second is at least the high level.
        """
        cdf = self._cdf(prob_group)
        age_true = labels.clip_age(age_true).astype("float64").reshape(-1)
        at_or_below = np.searchsorted(self.support, age_true, side="right") - 1
        below = np.searchsorted(self.support, age_true, side="left") - 1
        rows = np.arange(len(cdf))
        mass_at_or_below = np.where(at_or_below >= 0, cdf[rows, np.maximum(at_or_below, 0)], 0.0)
        mass_below = np.where(below >= 0, cdf[rows, np.maximum(below, 0)], 0.0)
        return mass_at_or_below, mass_below

    def to_dict(self):
        return {
            "method": "group_mixture",
            "coverage": self.coverage,
            "levels": [float(level) for level in self.levels],
            "support": [float(age) for age in self.support],
            "group_cdf": [[round(float(value), 6) for value in row] for row in self.group_cdf],
        }

    @classmethod
    def from_dict(cls, values):
        return cls(
            float(values["coverage"]),
            np.asarray(values["support"], dtype="float64"),
            np.asarray(values["group_cdf"], dtype="float64"),
            tuple(float(level) for level in values["levels"]),
        )


def group_age_distributions(train_ages, train_groups):
    """Return `(support, group_cdf)`: the clipped ages of training faces and each group's cumulative share.

    A group without training faces gets whole-year ages spread evenly over its range.
    """
    ages = labels.clip_age(train_ages).astype("float64").reshape(-1)
    groups = np.asarray(train_groups, dtype="int64").reshape(-1)
    per_group = []
    for group in range(labels.NUM_AGE_GROUPS):
        group_ages = ages[groups == group]
        if len(group_ages) == 0:
            upper = labels.AGE_GROUP_UPPER_BOUNDS[group] if group < len(labels.AGE_GROUP_UPPER_BOUNDS) else None
            group_ages = np.arange(GROUP_LOWER_BOUNDS[group], upper if upper else labels.MAX_AGE + 1.0)
        per_group.append(np.sort(group_ages))

    support = np.unique(np.concatenate(per_group))
    group_cdf = np.stack(
        [np.searchsorted(group_ages, support, side="right") / len(group_ages) for group_ages in per_group]
    )
    return support, group_cdf


def fit_group_intervals(prob_group, age_true, train_ages, train_groups, *, coverage=NOMINAL_COVERAGE):
    """Fit `GroupIntervals` from validation group probabilities and true ages.

    Args:
        prob_group: float array (n, 5). Validation group probabilities.
        age_true: float array (n,). Validation true ages in years.
        train_ages, train_groups: arrays. Ages and group indices of the
            training faces, which give the age distribution within each group.
        coverage: float. Nominal coverage.
    """
    _check_coverage(coverage)
    prob_group = np.asarray(prob_group, dtype="float64")
    if prob_group.ndim != 2 or prob_group.shape[1] != labels.NUM_AGE_GROUPS or len(prob_group) != len(age_true):
        raise ValueError(
            f"`prob_group` must have shape (n, {labels.NUM_AGE_GROUPS}) with one row per true age. "
            f"Received shape {prob_group.shape} and {len(age_true)} true ages."
        )
    if len(prob_group) == 0:
        raise ValueError("Need at least one validation face to calibrate the intervals.")

    support, group_cdf = group_age_distributions(train_ages, train_groups)
    tail = (1.0 - coverage) / 2.0
    uncalibrated = GroupIntervals(coverage, support, group_cdf, (tail, 1.0 - tail))
    mass_at_or_below, mass_below = uncalibrated.tail_scores(prob_group, age_true)

    # A new face falls below the interval when its mass at or below its age is
    # at most the low level: the rank-th smallest validation score keeps that
    # share at or under `tail`. The high level mirrors it on the other side.
    rank = _conformal_rank(len(prob_group), tail)
    level_low = np.sort(mass_at_or_below)[rank - 1] if rank >= 1 else -np.inf
    level_high = np.sort(mass_below)[len(prob_group) - rank] if rank >= 1 else np.inf
    return GroupIntervals(coverage, support, group_cdf, (float(level_low), float(level_high)))


def intervals_from_dict(values):
    """Rebuild `RegressionIntervals` or `GroupIntervals` from its `to_dict()` output."""
    methods = {"regression_residuals": RegressionIntervals, "group_mixture": GroupIntervals}
    method = values.get("method")
    if method not in methods:
        raise ValueError(f"Unknown interval method {method!r}. Expected one of {sorted(methods)}.")
    return methods[method].from_dict(values)


def fit_interval_calibration(
    task,
    decoded,
    age_true,
    *,
    train_ages=None,
    train_groups=None,
    coverage=NOMINAL_COVERAGE,
    min_bin_faces=MIN_BIN_FACES,
):
    """Fit the age intervals of a model from its decoded validation predictions.

    Args:
        task: `TaskSpec` of the model.
        decoded: dict from `evaluation.decode_outputs` for the validation faces.
        age_true: float array. True ages of the validation faces in years.
        train_ages, train_groups: arrays. Ages and group indices of the
            training faces; needed for group models only.
        coverage: float. Nominal coverage, 0.8 by default.
        min_bin_faces: int. Minimum number of faces per bin of predicted age (regression models).

    Returns:
        `RegressionIntervals` or `GroupIntervals`.
    """
    if task.predicts_age_group:
        if train_ages is None or train_groups is None:
            raise ValueError(f"Model {task.name} predicts age groups: pass `train_ages` and `train_groups`.")
        return fit_group_intervals(decoded["prob_group"], age_true, train_ages, train_groups, coverage=coverage)
    return fit_regression_intervals(decoded["age_pred"], age_true, coverage=coverage, min_bin_faces=min_bin_faces)


def interval_coverage(low, high, age_true):
    """Return the share of true ages (clipped 0-75) inside their closed interval [low, high]."""
    age_true = labels.clip_age(age_true).astype("float64").reshape(-1)
    inside = (np.asarray(low) <= age_true) & (age_true <= np.asarray(high))
    return float(inside.mean()) if len(inside) else float("nan")
