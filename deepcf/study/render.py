"""ACCURACY.md from the selection runner's report (deepcf.study.selection.build_report): the
tables are computed here, the prose is the template deepcf/study/templates/accuracy.md."""

from __future__ import annotations

import textwrap
from pathlib import Path
from string import Template

from deepcf.study.parity import PARITY_TOLERANCE
from deepcf.study.selection import Row, RowResult, ms

TEMPLATE = Path(__file__).with_name("templates") / "accuracy.md"

# published figures this command cannot compute: (model, data and protocol, metric, value,
# source)
ANCHORS = [
    ("GLocal-K", "ML-100K, its u1 80/20 split", "RMSE", "0.889",
     "Han et al., GLocal-K, CIKM 2021"),
    ("EASE", "ML-20M, Liang et al.'s user holdout", "NDCG@100", "0.420",
     "Steck, Embarrassingly Shallow Autoencoders, WWW 2019"),
    ("Mult-VAE", "ML-20M, Liang et al.'s user holdout", "NDCG@100", "0.426",
     "Liang et al., Variational Autoencoders for CF, WWW 2018"),
]

RATING_COLS = [("RMSE", "rmse"), ("MAE", "mae")]
TOPN_COLS = [("Recall@10", "recall_capped@10"), ("Recall@20", "recall_capped@20"),
             ("NDCG@10", "ndcg@10"), ("NDCG@20", "ndcg@20"), ("coverage@10", "coverage@10"),
             ("Gini@10", "gini@10")]




def _params(p: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in p.items()) or "none"


def _chosen(res: RowResult) -> str:
    """The chosen settings (the keys the grid varies, and the predictor's info), once when
    every split chose the same, else per split."""
    grid = res.row.grid
    varying = [k for k in grid[0] if len({repr(g.get(k)) for g in grid}) > 1] \
        if len(grid) > 1 else list(grid[0])
    shown = [_params({**{k: p[k] for k in varying if k in p}, **i})
             for p, i in zip(res.params, res.info)]
    if not shown:
        return "–"
    if len(set(shown)) == 1:
        return shown[0]
    return "; ".join(f"split {k}: {s}" for k, s in enumerate(shown))


def _label(row: Row) -> str:
    return row.name if row.kind == "baseline" else f"**{row.name}** ({row.kind})"


def _table(results: list[RowResult], head: list[str], cells) -> list[str]:
    """A markdown table: one row per result, `cells(res)` its cells; a failed row says why."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in results:
        row = [f"failed: {res.error}"] if res.error else cells(res)
        lines.append("| " + " | ".join([_label(res.row), *row]) + " |")
    return lines


def _val(res: RowResult) -> str:
    """The chosen entry's carve score, wherever the row was fitted on the carve."""
    return ms(res.val) if res.row.fits_on_carve() else "–"


def rating_table(results: list[RowResult], with_val: bool = True) -> list[str]:
    head = ["row", *(c for c, _ in RATING_COLS), "n cold"]
    head += ["val RMSE (carve)", "chosen"] if with_val else []
    return _table(results, head, lambda res: [
        *(ms([m[k] for m in res.metrics]) for _, k in RATING_COLS),
        "/".join(str(m["n_cold"]) for m in res.metrics),
        *([_val(res), _chosen(res)] if with_val else [])])


def topn_table(results: list[RowResult]) -> list[str]:
    head = ["row", *(c for c, _ in TOPN_COLS), "val NDCG@10 (carve)", "chosen"]
    return _table(results, head, lambda res: [
        *(ms([m[k] for m in res.metrics]) for _, k in TOPN_COLS), _val(res), _chosen(res)])


def _row_notes(rows: list[Row]) -> list[str]:
    lines = ["| row | protocol | kind | what | grid tried on the validation carve | untuned "
             "defaults |", "|---|---|---|---|---|---|"]
    for r in rows:
        grid = " / ".join(_params(p) for p in r.grid) if len(r.grid) > 1 else "fixed: " + \
            _params(r.grid[0])
        lines.append(f"| {r.name} | {r.protocol} | {r.kind} | {r.note} | {grid} | "
                     f"{_params(r.default_params)} |")
    return lines


def _targets(targets: list[dict]) -> str:
    lines = ["| target | best row | value | status |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['best']} | {t['value']} | "
              f"{'**met**' if t['met'] else 'not met'} |" for t in targets]
    return "\n".join(lines)


def _p(p: float) -> str:
    return "–" if p != p else (f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}")


def significance_table(comparisons: list[dict], seeds) -> str:
    """One line per comparison: per split, the mean paired difference (a - b) and its p-value."""
    if not comparisons:
        return "No pair of rows to compare (a row failed or is missing)."
    head = ["a", "b", "paired over test users", *(f"split {s}: mean(a - b), p" for s in seeds)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in comparisons:
        cells = [f"{t['mean_diff']:+.4f}, p = {_p(t['p'])} (n {t['n']})" for t in c["splits"]]
        lines.append("| " + " | ".join([c["a"], c["b"], c["metric"], *cells]) + " |")
    return "\n".join(lines)


def parity_section(parity: list[dict] | None, seeds) -> str:
    """The recommended experiments as `deepcf.train` trains them, against their rows."""
    if not parity:
        return ""
    head = ["command", "row", "metric", *(f"split {s}: deepcf.train / row (difference)"
                                          for s in seeds), "seconds per run", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in parity:
        if p["error"]:
            cells = [f"failed: {p['error']}"] * len(seeds) + ["–", "not met"]
        else:
            cells = [f"{u:.4f} / {s:.4f} ({d:+.4f})"
                     for u, s, d in zip(p["user"], p["study"], p["diffs"])]
            seconds = p["seconds"]
            cells += [f"{sum(seconds) / len(seconds):.0f}" if seconds else "–",
                      f"within {PARITY_TOLERANCE}" if p["ok"] else "**outside**"]
        lines.append("| " + " | ".join([f"`experiment={p['experiment']}`", p["row"], p["metric"],
                                         *cells]) + " |")
    return "\n".join([
        "", "## As a user trains them", "", textwrap.fill(
        "The README's recommended experiments, each run as `python -m deepcf.train "
        "experiment=<name> data=ratings_csv data.source.path=DIR/<protocol>/split<seed>/"
        "train.csv data.source.test_path=DIR/<protocol>/split<seed>/test.csv` (a process of "
        "its own, defaults as shipped: refit on) on the split files that `python -m "
        "deepcf.study.accuracy --write-splits DIR` writes, its test figure (metrics.json) "
        "against the row's on the same split. The run draws its own validation carve (a "
        "random 10% of the training ratings, the run's seed) and gives cold test ratings the "
        "training mean; the rows use the protocols' carves and the bias fallback.", 96,
        break_on_hyphens=False, break_long_words=False), "", *lines])


def _side(side: dict | None) -> str:
    if side is None:
        return ""
    return "\n".join([
        "", f"## Untuned defaults on {side['data']}", "",
        f"The rating rows at their untuned defaults (no grid search on this data) against the "
        f"bias baseline, rating protocol, split seeds {', '.join(map(str, side['seeds']))}.",
        "", *rating_table(side["rating"], with_val=False)])


def render(report: dict) -> str:
    """ACCURACY.md from `build_report`'s dict."""
    d = report
    text = Template(TEMPLATE.read_text()).substitute(
        command=d["command"],
        make=" (`make accuracy`)" if d["command"] == "python -m deepcf.study.accuracy" else "",
        date=d["date"], seconds=f"{d['seconds']:.0f}", cpus=d["cpus"], data=d["data"],
        seeds=", ".join(map(str, d["seeds"])), targets=_targets(d["targets"]),
        rating_table="\n".join(rating_table(d["rating"])),
        topn_table="\n".join(topn_table(d["topn"])),
        anchors="\n".join(f"| {a} | {b} | {c} | {v} | {s} |" for a, b, c, v, s in ANCHORS),
        rows="\n".join(_row_notes(d["rows"])), side=_side(d.get("side")),
        parity=parity_section(d.get("parity"), d["seeds"]),
        significance=significance_table(d.get("significance") or [], d["seeds"]))
    return text.rstrip("\n") + "\n"


SCALE_TEMPLATE = TEMPLATE.with_name("accuracy_scale.md")
SCALE_BEGIN, SCALE_END = "<!-- accuracy-scale -->", "<!-- /accuracy-scale -->"


def _gb(x: float) -> str:
    return f"{x:.2f} GB"


def render_scale(report: dict) -> str:
    """ACCURACY.md's at-scale section (between SCALE_BEGIN and SCALE_END) from
    deepcf.study.scale.run_scale's dict (plus its `command` and `mode`)."""
    d = report
    res = d["results"]

    def table(protocol, cols):
        head = ["row", *(c for c, _ in cols), "wall", "peak RSS", "runner RSS"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in (x for x in res if x["row"].protocol == protocol):
            cells = ([f"{r['ok'][k]:.4f}" for _, k in cols] if "ok" in r
                     else [f"failed: {r['error']}"] + [""] * (len(cols) - 1))
            lines.append("| " + " | ".join([_label(r["row"]), *cells, f"{r['seconds']:.0f} s",
                                            _gb(r["peak_rss_gb"]), _gb(r["parent_rss_gb"])])
                         + " |")
        return "\n".join(lines)

    text = Template(SCALE_TEMPLATE.read_text()).substitute(
        command=d["command"],
        make=" (`make accuracy-scale`)" if d["command"].endswith("--scale") else "",
        date=d["date"], seconds=f"{d['seconds']:.0f}", cpus=d["cpus"], data=d["data"],
        mode=d["mode"], eval_users=f"{d['eval_users']:,}",
        rating_table=table("rating", RATING_COLS), topn_table=table("topn", TOPN_COLS),
        rows="\n".join(_row_notes([r["row"] for r in res])))
    return f"{SCALE_BEGIN}\n{text.strip()}\n{SCALE_END}\n"


def with_scale_section(text: str, section: str | None) -> str:
    """`text` (ACCURACY.md) with its at-scale section replaced by `section` (appended where it
    has none; kept as it is when `section` is None)."""
    if section is None:
        return text
    if SCALE_BEGIN in text and SCALE_END in text:
        head, rest = text.split(SCALE_BEGIN, 1)
        tail = rest.split(SCALE_END, 1)[1].lstrip("\n")
        return head + section + (("\n" + tail) if tail else "")
    return text.rstrip("\n") + "\n\n" + section


def scale_section(text: str) -> str | None:
    """The at-scale section of an ACCURACY.md text, None where it has none."""
    if SCALE_BEGIN not in text or SCALE_END not in text:
        return None
    return SCALE_BEGIN + text.split(SCALE_BEGIN, 1)[1].split(SCALE_END, 1)[0] + SCALE_END + "\n"
