"""The Streamlit app over a run: ``python -m hdmap_ad app`` (or ``make app``).

Two pages (sidebar, or ``?page=results`` / ``?page=map`` in the address):

- **Results**: metrics of every domain x experiment (sortable table, per-condition columns,
  filters), the hypotheses' verdicts with their 95% intervals, ROC curves and score
  histograms of chosen experiments, and two experiments side by side on the same test maps
  (which maps changed verdict, with links to them).
- **Map**: a test map of a target (``?target=domainC_gated&image_id=test/fault/000123``) or an
  uploaded TIFF/PNG: the map, its anomaly heat map over it, score and deployable threshold,
  verdict, the gate's decision with the map's p90 and the gate threshold, each sub-model's
  score where both were searched, and the normal reference patch nearest to the worst patch
  in the sub-model that scored the map (PatchCore's bank ``sources``).

The run folder is ``$HDMAP_AD_ROOT`` (default: the working directory). Reads are lazy and
cached (:mod:`hdmap_ad.app.data`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pandas as pd
import streamlit as st

from hdmap_ad.app.data import (
    Inspector,
    MapView,
    Run,
    Target,
    compare,
    deployable,
    gate_rule,
    roc_points,
    score_groups,
)
from hdmap_ad.deploy.render import draw_box, overlay_rgb, patch_box, worst_patch
from hdmap_ad.errors import InputError
from hdmap_ad.gating import BOTH

PAGES = ("Results", "Map")
SCALE = 6  # map pixels -> screen pixels (HDMAP maps are 31 x 95)


def _root() -> str:
    return os.environ.get("HDMAP_AD_ROOT", ".")


@st.cache_data(show_spinner=False)
def _metrics(root: str, signature: tuple) -> pd.DataFrame:
    return Run(root).metrics_table()


@st.cache_data(show_spinner=False)
def _hypotheses(root: str, signature: tuple) -> pd.DataFrame:
    return Run(root).hypotheses_table()


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else 0.0


@st.cache_data(show_spinner=False, max_entries=64)
def _scores(root: str, target: Target, mtime: float) -> pd.DataFrame:
    return Run(root).scores(target)


def scores_of(run: Run, target: Target) -> pd.DataFrame:
    return _scores(str(run.root), target, _mtime(run.scores_path(target)))


@st.cache_resource(show_spinner="loading the model ...", max_entries=8)
def _inspector(root: str, target: Target, mtime: float) -> Inspector:
    return Inspector(Run(root), target)


def inspector_of(run: Run, target: Target) -> Inspector:
    return _inspector(str(run.root), target, _mtime(run.model_meta_path(target)))


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# -- results page -----------------------------------------------------------------------------
def results_page(run: Run) -> None:
    st.title("Results")
    sig = run.signature()
    table = _metrics(str(run.root), sig)
    if table.empty:
        st.warning(f"No metrics under {run.results}: run `make demo` (or snakemake) first.")
        return
    st.caption(f"{len(table)} domain x experiment targets in `{run.results}`. Click a column "
               "header to sort. `acc_best*` is tuned on the test scores (comparison only); "
               "`deployable` thresholds are fit on the references alone.")
    c1, c2, c3 = st.columns(3)
    domains = c1.multiselect("Domains", sorted(table.domain.unique()), key="f_domains")
    methods = c2.multiselect("Methods", sorted(table.method.dropna().unique()), key="f_methods")
    gates = c3.multiselect("Gates", sorted(table.gate.dropna().unique()), key="f_gates")
    keep = np.ones(len(table), dtype=bool)
    for column, values in (("domain", domains), ("method", methods), ("gate", gates)):
        if values:
            keep &= table[column].isin(values).to_numpy()
    shown = table[keep]
    st.dataframe(shown, hide_index=True, key="metrics_table",
                 column_config={c: st.column_config.NumberColumn(format="%.3f")
                                for c in shown.columns if shown[c].dtype.kind == "f"})

    st.header("Hypotheses")
    hyp = _hypotheses(str(run.root), sig)
    if hyp.empty:
        st.info("No hypothesis results (results/hypotheses/*.json).")
    else:
        st.caption("Paired bootstrap over test maps, b - a; supported when the whole 95% "
                   "interval of delta AUROC lies above the margin.")
        st.dataframe(hyp, hide_index=True, key="hypotheses_table")

    boards = run.leaderboards()
    if boards:
        st.header("Leaderboards")
        for board in boards:
            st.subheader(board["name"])
            st.caption(board["summary"])
            st.dataframe(board["ranking"], hide_index=True, key=f"leaderboard_{board['name']}")
            if board["figure"] is not None:
                st.image(str(board["figure"]))

    # the first hypothesis' domain and arms are the default views below
    first = hyp.iloc[0] if not hyp.empty else None
    domains_all = sorted(table.domain.unique())
    focus = domains_all.index(first.domain) if first is not None and first.domain in \
        domains_all else 0

    st.header("ROC curves and score histograms")
    domain = st.selectbox("Domain", domains_all, index=focus, key="curves_domain")
    names = table[table.domain == domain].experiment.tolist()
    chosen = st.multiselect("Experiments", names, default=names[:3], key="curves_experiments")
    targets = {r.experiment: Target(r.target, r.domain, r.experiment)
               for r in table[table.domain == domain].itertuples()}
    curves_and_histograms(run, [targets[e] for e in chosen])

    st.header("Side by side")
    side_by_side(run, table, focus, None if first is None else (first.a, first.b))


def curves_and_histograms(run: Run, targets: list[Target]) -> None:
    import altair as alt

    if not targets:
        return
    rocs, loaded = [], {}
    for t in targets:
        try:
            loaded[t] = scores_of(run, t)
        except InputError as exc:
            st.warning(str(exc))
            continue
        rocs.append(roc_points(loaded[t]).assign(experiment=t.experiment))
    if not loaded:
        return
    roc = pd.concat(rocs, ignore_index=True)
    chart = alt.Chart(roc).mark_line(interpolate="step-after").encode(
        x=alt.X("fpr:Q", title="false-positive rate"),
        y=alt.Y("tpr:Q", title="true-positive rate"),
        color=alt.Color("experiment:N"),
    ).properties(height=320, title="ROC (test maps, fault = positive)")
    st.altair_chart(chart, width="stretch")
    cols = st.columns(len(loaded))
    for col, (t, scores) in zip(cols, loaded.items(), strict=True):
        groups = score_groups(scores)
        thr = deployable(scores)
        hist = alt.Chart(groups).mark_bar(opacity=0.55).encode(
            x=alt.X("score:Q", bin=alt.Bin(maxbins=40), title="image score"),
            y=alt.Y("count():Q", stack=None, title="maps"),
            color=alt.Color("group:N", legend=alt.Legend(orient="bottom", columns=3)),
        ).properties(height=340, title=f"{t.experiment} (threshold {_fmt(thr, 3)})")
        if thr is not None:
            rule = alt.Chart(pd.DataFrame({"score": [thr]})).mark_rule(
                color="black", strokeDash=[4, 3]).encode(x="score:Q")
            hist = hist + rule
        col.altair_chart(hist, width="stretch")


def side_by_side(run: Run, table: pd.DataFrame, focus: int = 0,
                 arms: tuple[str, str] | None = None) -> None:
    c1, c2, c3 = st.columns(3)
    domain = c1.selectbox("Domain ", sorted(table.domain.unique()), index=focus,
                          key="cmp_domain")
    names = table[table.domain == domain].experiment.tolist()
    ia, ib = 0, min(1, len(names) - 1)
    if arms is not None and arms[0] in names and arms[1] in names:
        ia, ib = names.index(arms[0]), names.index(arms[1])
    a = c2.selectbox("Experiment a", names, index=ia, key="cmp_a")
    b = c3.selectbox("Experiment b", names, index=ib, key="cmp_b")
    rows = {r.experiment: Target(r.target, r.domain, r.experiment)
            for r in table[table.domain == domain].itertuples()}
    try:
        both = compare(scores_of(run, rows[a]), scores_of(run, rows[b]))
    except InputError as exc:
        st.warning(str(exc))
        return
    changed = both[both.changed]
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("maps scored by both", len(both))
    m2.metric("verdict changed", len(changed))
    m3.metric("fixed by b", int((changed.effect == "fixed").sum()))
    m4.metric("broken by b", int((changed.effect == "broken").sum()))
    changed = changed.assign(inspect=[
        "?" + urlencode({"page": "map", "target": rows[b].name, "image_id": i})
        for i in changed.image_id])
    st.dataframe(changed, hide_index=True, key="changed_table", column_config={
        "inspect": st.column_config.LinkColumn("inspect", display_text="open map"),
        "score_a": st.column_config.NumberColumn(format="%.4f"),
        "score_b": st.column_config.NumberColumn(format="%.4f"),
    })


# -- map page ---------------------------------------------------------------------------------
def map_page(run: Run) -> None:
    st.title("Map")
    table = _metrics(str(run.root), run.signature())
    if table.empty:
        st.warning(f"No metrics under {run.results}: run `make demo` (or snakemake) first.")
        return
    names = table.target.tolist()
    wanted = st.query_params.get("target")
    target_name = st.selectbox("Target (domain x experiment)", names,
                               index=names.index(wanted) if wanted in names else 0,
                               key="map_target")
    row = table[table.target == target_name].iloc[0]
    target = Target(row.target, row.domain, row.experiment)
    st.query_params["target"] = target.name
    try:
        insp = inspector_of(run, target)
    except InputError as exc:
        st.error(str(exc))
        return
    source = st.radio("Map", ["test map", "upload a TIFF/PNG"], horizontal=True,
                      key="map_source")
    if source == "test map":
        ids = insp.test_ids("score")
        wanted_id = st.query_params.get("image_id")
        image_id = st.selectbox(
            f"Test map ({len(ids)}, highest score first)", ids,
            index=ids.index(wanted_id) if wanted_id in ids else 0, key="map_image_id")
        st.query_params["image_id"] = image_id
        view = insp.test_map(image_id)
        desc = None
    else:
        upload = st.file_uploader("Map file", type=["tif", "tiff", "png"], key="map_upload")
        if upload is None:
            st.info(f"Upload a map of the model's shape {insp.map_shape}; it is scored as "
                    "`python -m hdmap_ad predict` scores it.")
            return
        suffix = Path(upload.name).suffix or ".tiff"
        with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
            tmp.write(upload.getvalue())
            tmp.flush()
            try:
                view, desc = insp.upload(tmp.name)
            except InputError as exc:
                st.error(str(exc).replace(tmp.name, upload.name))
                return
        view.name = upload.name
    show_map(insp, view, desc)


def show_map(insp: Inspector, view: MapView, desc: np.ndarray | None) -> None:
    grid = tuple(view.patch_scores.shape)
    input_size, resize = insp.input_size, insp.resize
    worst = worst_patch(view.patch_scores)
    box = patch_box(*worst, grid, view.image.shape, input_size, resize)
    verdict = view.verdict
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("score", _fmt(view.score))
    c2.metric("deployable threshold", _fmt(view.threshold))
    c3.metric("verdict", verdict, delta=None if not view.label else f"truth: {view.label}",
              delta_color="off", delta_arrow="off")
    c4.metric("gate decision", view.routing,
              delta=f"scored by {view.sub_model}", delta_color="off", delta_arrow="off")
    st.markdown(
        f"**{view.name}**"
        + (f" ({view.condition}/{view.label})" if view.label else " (uploaded)")
        + f": p90 = {view.p90:.4f}; gate `{insp.meta['gate']['mode']}`: "
        + gate_rule(insp.meta["gate"]))
    from hdmap_ad.metrics.pixel import anomaly_map

    heat = anomaly_map(view.patch_scores, tuple(view.image.shape[:2]))
    top = view.threshold if view.threshold is not None else float(heat.max())
    left, right = st.columns(2)
    left.image(draw_box(overlay_rgb(view.image, None, 0, 1, scale=SCALE), box, SCALE),
               caption="map (box: worst patch)", width="stretch")
    right.image(draw_box(overlay_rgb(view.image, heat, 0.0, top, scale=SCALE), box, SCALE),
                caption=f"anomaly map (jet, 0 .. {top:.3f})", width="stretch")

    if desc is None:
        desc = insp.descriptors(view.name)
    note = ""
    if view.sub_scores is None and view.routing == BOTH:
        # the run stores the kept score only; both are rescored for this map alone (a batch
        # of one: the last float32 digits may differ from the stored score's)
        view.sub_scores = {n: float(m.score(desc)[0][0]) for n, m in insp.models.items()}
        note = " (rescored for this map alone)"
    if view.sub_scores and len(view.sub_scores) > 1:
        st.markdown("Both sub-models searched" + note + ": " + ", ".join(
            f"`{n}` {s:.4f}" for n, s in sorted(view.sub_scores.items()))
            + f"; the lower ({view.sub_model}) is kept.")

    st.subheader("Nearest normal reference")
    near = insp.nearest_reference(desc, view.sub_model, worst)
    if not near.available:
        st.info(near.note)
        refs = pd.DataFrame(insp.references(view.sub_model))
        st.dataframe(refs, hide_index=True, key="refs_table")
        return
    st.markdown(f"Worst patch (row {worst[0]}, col {worst[1]}) is nearest to patch "
                f"(row {near.patch[0]}, col {near.patch[1]}) of reference **{near.image_id}** "
                f"at distance {near.distance:.4f} ({near.note}).")
    if near.image is not None:
        ref_box = patch_box(*near.patch, grid, near.image.shape, input_size, resize)
        left, right = st.columns(2)
        left.image(draw_box(overlay_rgb(near.image, None, 0, 1, scale=SCALE), ref_box, SCALE),
                   caption=f"reference {near.image_id} (box: nearest patch)", width="stretch")
        zoom = [crop(view.image, box), crop(near.image, ref_box)]
        lo = min(float(z.min()) for z in zoom)
        hi = max(float(z.max()) for z in zoom)
        a, b = right.columns(2)
        for col, z, what in ((a, zoom[0], "worst patch"), (b, zoom[1], "nearest reference patch")):
            col.image(overlay_rgb(z, None, 0, 1, scale=16, gray_range=(lo, hi)),
                      caption=f"{what} (same gray scale)", width="stretch")


def crop(img: np.ndarray, box: tuple[int, int, int, int], margin: int = 3) -> np.ndarray:
    """The map around ``box`` (``margin`` pixels each side, clipped at the borders)."""
    y0, x0, y1, x1 = box
    return img[max(0, y0 - margin): y1 + margin, max(0, x0 - margin): x1 + margin]


def main() -> None:
    st.set_page_config(page_title="hdmap-ad", layout="wide")
    run = Run(_root())
    wanted = str(st.query_params.get("page", "results")).capitalize()
    page = st.sidebar.radio("Page", PAGES, index=PAGES.index(wanted) if wanted in PAGES else 0,
                            key="page")
    st.query_params["page"] = page.lower()
    st.sidebar.caption(f"run: `{run.root.resolve()}`")
    if page == "Results":
        results_page(run)
    else:
        map_page(run)


main()
