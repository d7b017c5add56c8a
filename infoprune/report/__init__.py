"""Aggregate one or more sweeps of ``prune.py`` runs into a markdown table (mean +/- std over seeds, one row per
metric, scope, schedule and target, best fine-tuned accuracy first) and a plot (test accuracy vs fraction of
parameters remaining, one line per metric; one panel after fine-tuning, one right after pruning; bars when there is a
single target). Written next to the first sweep, or to ``--out <prefix>`` (``<prefix>.md`` and ``<prefix>.png``).
``--reference <metric>`` adds each row's accuracy difference to that metric on the same seeds (paired); baselines
that recorded their validation curve get a plateau table and a plot of the curves. With one ``--by`` key (e.g.
``finetune.max_epochs``) the page also ranks the metrics at each of its values, with Kendall's tau between
consecutive rankings (does the order still change with a longer fine-tune?) and the pairs that change order, each
with its gap at the longer length, the std over seeds of the pair's paired difference and its paired t-test.
Rows over two or more seeds also get every two metrics of a setting compared seed by seed: a heat map of their mean
paired difference (``<prefix>_pairwise.png``, * where the paired t-test gives p < 0.05) and how many pairs it
separates against the number expected by chance.
``--by`` adds config keys (read from each job's ``config_resolved.yaml``) to the grouping, e.g. for a calibration
sweep over ``pruning.stats.bins``.

    python -m infoprune.report logs/prune/multiruns/<date> [more sweep dirs] [--out docs/results/my_table]
        [--by pruning.stats.bins pruning.stats.num_images] [--metrics mi wmi] [--reference l1_in]
"""
