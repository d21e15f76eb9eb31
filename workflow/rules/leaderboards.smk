# Leaderboards (params: leaderboards.<name>): experiments ranked over domains from their
# metrics JSONs (existing targets; a leaderboard adds no fit or score job) with Demšar's
# statistics: average ranks, Friedman / Iman-Davenport, Nemenyi CD, Holm-corrected Wilcoxon.
rule leaderboard:
    input:
        leaderboard_results,
        code=code("hdmap_ad.report.leaderboard"),
    output:
        **leaderboard_paths("{leaderboard}"),
    params:
        spec=leaderboard_spec,
    wildcard_constraints:
        leaderboard=_alternation(PARAMS.leaderboards),
    log:
        LAYOUT.log("leaderboard", "{leaderboard}"),
    shell:
        "python -m hdmap_ad leaderboard --spec {params.spec:q} --out {output.json:q} "
        "--markdown {output.md:q} --figure {output.figure:q} 2> {log:q}"
