# hdmap-ad: dataset -> features -> fitted methods (gated or mixed) -> scores -> metrics.
# Thin on purpose: every rule calls `python -m hdmap_ad <step>`; helpers live in common.smk.
# params.yaml (or `--config params=presets/x.yaml`) is read as data by common.smk, never by
# Snakemake's `configfile:`, which would evaluate a YTE template in it.


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/fit.smk"
include: "workflow/rules/scoring.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/leaderboards.smk"
include: "workflow/rules/selection.smk"
include: "workflow/rules/export.smk"


# Light bookkeeping rules stay on the submit host in cluster runs.
localrules:
    all,
    synthetic_data,
    aggregate,
    sweep,
    hypothesis,
    leaderboard,
    select,
    report,


rule all:
    input:
        LAYOUT.aggregate(),
        target_hypotheses(),
        target_leaderboards(),
        target_selections(),
        LAYOUT.report(),
