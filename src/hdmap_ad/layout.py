"""Where a run's files live: every path under ``work/`` and ``results/``, named in one place.

The Snakemake rules (``workflow/rules/common.smk`` makes the one :class:`RunLayout` they use),
the export step, the bundle's staleness check, the app and the CLI ask a layout instead of
spelling paths. A path says what made it (a target is ``{prefix}{domain}_{experiment}``), as
patchcore-inspection names run folders by their hyperparameters.

Paths are plain strings (Snakemake wants them; ``Path(...)`` them where needed), relative to
the working directory when ``root`` is empty. An argument may be a Snakemake wildcard such as
``"{domain}"``: the method then returns the rule's pattern.

Example:
    >>> lay = RunLayout()
    >>> lay.manifest("C")
    'work/manifests/domain_C.parquet'
    >>> lay.metrics("{domain}", "{experiment}")
    'results/{domain}_{experiment}.json'
    >>> RunLayout("/runs/a", result_prefix="mvtec_").exported_model("bottle", "gated")
    '/runs/a/results/models/mvtec_bottle_gated'
"""

from __future__ import annotations

from dataclasses import dataclass

#: The folder names of a run under its project folder.
WORK = "work"
RESULTS = "results"


def _under(root: str, folder: str) -> str:
    # an absolute folder (e.g. --config work_dir=/scratch/w) ignores the root
    if not root or folder.startswith("/"):
        return folder
    return f"{root.rstrip('/') or '/'}/{folder}".replace("//", "/")


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run.

    Args:
        root: the project folder ('' = the working directory).
        work: the work folder (intermediate files), under ``root`` unless absolute.
        results: the results folder (metrics, reports, exported models), likewise.
        result_prefix: ``dataset.result_prefix``, the start of every target name.
    """

    root: str = ""
    work: str = WORK
    results: str = RESULTS
    result_prefix: str = ""

    # -- the two folders ------------------------------------------------------------------------
    @property
    def work_dir(self) -> str:
        return _under(self.root, self.work)

    @property
    def results_dir(self) -> str:
        return _under(self.root, self.results)

    def target(self, domain: str, experiment: str) -> str:
        """A result's name: ``{prefix}{domain}_{experiment}``."""
        return f"{self.label(domain)}_{experiment}"

    def label(self, domain: str) -> str:
        """A domain's name in results: ``{prefix}{domain}``."""
        return f"{self.result_prefix}{domain}"

    # -- work/ ----------------------------------------------------------------------------------
    def manifest(self, domain: str) -> str:
        return f"{self.work_dir}/manifests/domain_{domain}.parquet"

    def fingerprint_cache(self, domain: str) -> str:
        """The data fingerprint's cache of a domain folder (``hdmap_ad.data.fingerprint``)."""
        return f"{self.work_dir}/cache/fingerprint/domain_{domain}.json"

    def features_dir(self, domain: str, backbone: str) -> str:
        return f"{self.work_dir}/features/domain_{domain}/{backbone}"

    def features(self, domain: str, backbone: str, layer: str) -> str:
        """One layer's feature cache."""
        return f"{self.features_dir(domain, backbone)}/{layer}.parquet"

    def model_dir(self, domain: str, experiment: str) -> str:
        """The fit step's model folder."""
        return f"{self.work_dir}/models/domain_{domain}/{experiment}"

    def model_meta(self, domain: str, experiment: str) -> str:
        """The fit step's metadata JSON, beside its model folder."""
        return f"{self.model_dir(domain, experiment)}.json"

    def scores(self, domain: str, experiment: str) -> str:
        return f"{self.work_dir}/scores/domain_{domain}/{experiment}.parquet"

    def validation_dir(self, domain: str, set_id: str) -> str:
        """A validation set's folder, named by its content (``SelectionPlan.set_id``)."""
        return f"{self.work_dir}/validation/domain_{domain}/{set_id}"

    def validation_set(self, domain: str, set_id: str) -> str:
        """The set itself (its maps and ``manifest.parquet``)."""
        return f"{self.validation_dir(domain, set_id)}/set"

    def validation_features_dir(self, domain: str, set_id: str, backbone: str) -> str:
        return f"{self.validation_dir(domain, set_id)}/features/{backbone}"

    def validation_features(self, domain: str, set_id: str, backbone: str, layer: str) -> str:
        return f"{self.validation_features_dir(domain, set_id, backbone)}/{layer}.parquet"

    def validation_scores(self, domain: str, set_id: str, experiment: str) -> str:
        """One grid point's validation JSON."""
        return f"{self.validation_dir(domain, set_id)}/scores/{experiment}.json"

    def log(self, step: str, name: str | None = None) -> str:
        """A step's log: ``logs/<step>/<name>.log``, or ``logs/<step>.log`` for a one-job step."""
        return f"{self.work_dir}/logs/{step}/{name}.log" if name else \
            f"{self.work_dir}/logs/{step}.log"

    # -- results/ -------------------------------------------------------------------------------
    def result(self, target: str) -> str:
        """The metrics JSON of a target name (a sweep's summary for a sweep)."""
        return f"{self.results_dir}/{target}.json"

    def metrics(self, domain: str, experiment: str) -> str:
        return self.result(self.target(domain, experiment))

    def domain_results(self, domain: str) -> str:
        """A glob of every result of a domain."""
        return self.result(self.target(domain, "*"))

    def selected(self, domain: str, selection: str) -> str:
        return self.result(self.target(domain, f"{selection}_selected"))

    def hypotheses_dir(self) -> str:
        return f"{self.results_dir}/hypotheses"

    def hypothesis(self, name: str) -> str:
        return f"{self.hypotheses_dir()}/{name}.json"

    def leaderboards_dir(self) -> str:
        return f"{self.results_dir}/leaderboards"

    def leaderboard(self, name: str) -> dict[str, str]:
        """The JSON, markdown table and critical-difference diagram of a leaderboard."""
        base = f"{self.leaderboards_dir()}/{name}"
        return {"json": f"{base}.json", "md": f"{base}.md",
                "figure": f"{base}_critical_difference.png"}

    def aggregate(self) -> str:
        """Every target's metrics in one JSON (DVC's metrics file)."""
        return f"{self.results_dir}/metrics.json"

    def summary_md(self) -> str:
        return f"{self.results_dir}/summary.md"

    def summary_csv(self) -> str:
        return f"{self.results_dir}/summary.csv"

    def report(self) -> str:
        return f"{self.results_dir}/report.md"

    def figures(self) -> str:
        return f"{self.results_dir}/figures"

    def plots(self) -> str:
        """ROC points for ``dvc plots show``."""
        return f"{self.results_dir}/plots/roc"

    def roc_plot(self, domain: str, experiment: str) -> str:
        return f"{self.plots()}/{self.target(domain, experiment)}.csv"

    def exported_models_dir(self) -> str:
        return f"{self.results_dir}/models"

    def exported(self, target: str) -> str:
        """An exported model folder by its target name."""
        return f"{self.exported_models_dir()}/{target}"

    def exported_model(self, domain: str, experiment: str) -> str:
        return self.exported(self.target(domain, experiment))
