"""Statistical tests between the criteria of a sweep: paired t-tests over seeds (the same baseline per seed, so
the baselines' own spread cancels) for every two metrics of a setting, and the pairs whose order changes between
two settings of a ``--by`` key."""
from __future__ import annotations

import statistics
from collections import defaultdict

from scipy import stats

from infoprune.report.runs import seed_differences, setting_name

#: a pair whose paired t-test over the seeds gives a p-value under this is ordered by more than the seeds' noise
ORDER_P = 0.05


def order_changes(ranks_before: dict[str, int], after: dict[str, tuple]) -> list[tuple]:
    """The pairs of metrics ranked in a different order before than ``after`` (metric -> mean accuracy, then
    optionally seed -> accuracy): ``(ahead, behind, gap, paired_std, p)`` with ``ahead`` the better one after,
    ``gap`` its lead in mean accuracy there, and over the seeds both ran (the same baseline per seed, so the
    baselines' own spread cancels) the sample std of ``d = ahead - behind`` and the two-sided p-value of the
    one-sample t-test of ``d`` against 0 (``t = mean(d) / (std(d) / sqrt(n))``, n - 1 degrees of freedom); both
    None with fewer than two such seeds. Largest gap first; ties on either side are no change."""
    shared = sorted(set(ranks_before) & set(after))
    changes = []
    for i, m in enumerate(shared):
        for n in shared[i + 1:]:
            before = ranks_before[m] - ranks_before[n]
            gap = after[m][0] - after[n][0]
            if before * gap > 0:  # m behind n before (larger rank) and ahead after, or the reverse
                ahead, behind = (m, n) if gap > 0 else (n, m)
                changes.append((ahead, behind, abs(gap), *paired_test(after[ahead], after[behind])))
    return sorted(changes, key=lambda c: -c[2])


def paired_test(first: tuple, second: tuple) -> tuple[float | None, float | None]:
    """Sample std of ``first - second`` over the seeds both ran (seed -> accuracy as the second item of each) and
    the two-sided p-value of its one-sample t-test against 0 (0 or 1 when every seed gives the same difference);
    None, None with fewer than two shared seeds or without per-seed accuracies."""
    if len(first) < 2 or len(second) < 2:
        return None, None
    return difference_test(seed_differences(first[1], second[1]))


def difference_test(differences: list[float]) -> tuple[float | None, float | None]:
    """Sample std of paired ``differences`` and the two-sided p-value of their one-sample t-test against 0 (0 or 1
    when all are equal); None, None with fewer than two."""
    if len(differences) < 2:
        return None, None
    std = statistics.stdev(differences)
    if std == 0:
        return 0.0, float(differences[0] == 0)
    return std, float(stats.ttest_1samp(differences, 0).pvalue)


def pairwise_tests(rows: list[dict]) -> dict[str, list[tuple]]:
    """Per setting (:func:`setting_name`), every pair of its metrics that shares two or more seeds as ``(first,
    second, mean_d, std_d, p)``: ``d = first - second``, seed by seed, of the final accuracy
    (:func:`difference_test` for its std and two-sided t-test p). Metrics in order of mean accuracy, best first;
    settings without a pair are left out."""
    by_setting: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_setting[setting_name(r)].append(r)
    tests = {}
    for name, members in by_setting.items():
        members = sorted(members, key=lambda r: -r["acc_finetuned"][0])
        pairs = []
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                differences = seed_differences(a["per_seed"], b["per_seed"])
                if len(differences) >= 2:
                    pairs.append((a["metric"], b["metric"], statistics.fmean(differences),
                                  *difference_test(differences)))
        if pairs:
            tests[name] = pairs
    return tests
