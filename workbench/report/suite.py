"""`wb report --suite`: reports/table1/README.md, Table 1 and Table 5 of the paper at CPU scale, each sub-table
at the CPU operating point (studies/table1*.toml) and, where it was run, at the paper's (the calibration plan's
'paper' budget, `wb calibrate --budget paper`: studies/calibration/table1*-paper.toml),
with the paper's best beside ours, the metric that decides, and whether another logged metric flips the verdict."""
from __future__ import annotations

from pathlib import Path

from workbench.report import markdown
from workbench.report.ablation import base_label, markdown_table
from workbench.report.quality import BARS, best_quality, calibration_lines
from workbench.report.record import ReportError, axis_table, fmt, load_record
from workbench.report.stats import ALPHA, kendall_tau
from workbench.report.verdicts import flips_summary, other_metrics, other_metrics_lines, outcome, verdict

SUITE = ("table1a", "table1b", "table1c", "table1d", "table1e", "table1f", "table5")
PAPER_POINT = "-paper"  # table1a-paper: table1a's axis at the paper's operating point (studies/calibration.toml)
AT_PAPER_POINT = SUITE[:6]  # the calibration plan's 'paper' budget: every Table 1 sub-table; table5 is not one
OPERATING_POINTS = {"": "CPU (100%, uniform(0,1), p = 0.5)", PAPER_POINT: "paper (25%, lognorm(-0.4,1.0), p = 1)"}
GUIDED = {"table1f": "each w is scored against its own guided target, so the table says how well one step learns "
                     "what each w asks for; the paper's claim (guidance lowers FID) is not testable here, where the "
                     "unguided exact map already is the data",
          "table5": "every kappa is scored against the one guided target at w' = 2; the paper's claim (mixing kappa "
                    "lowers FID) is about sample quality against real images, which this target does not measure"}


def suite_names(names: tuple[str, ...] = SUITE) -> list[tuple[str, str]]:
    """Every study of the suite, each sub-table at each operating point it runs at, with the command that runs it."""
    return [(name, f"wb ablate {name}") for name in names] + [
        (name + PAPER_POINT, "wb calibrate --budget paper") for name in names if name in AT_PAPER_POINT]


def render_suite(names: tuple[str, ...], tracking_uri: str, out_root: Path = Path("reports"),
                 title: str = "table1") -> Path:
    """One page laid out like the paper's Table 1: per sub-table and operating point our best, the paper's, the
    agreement by the deciding metric and the metrics that would flip it; then each table in full."""
    summary = markdown.header(["sub-table", "operating point", "axis", "decided by", "our best", "learned (bar)",
                               "paper's best", "agreement", "Kendall tau (p)", "flipped by"])
    sections, verdicts, statements = [], [], []
    config = None
    for name in names:
        for point, point_title in OPERATING_POINTS.items():
            study = name + point
            if point and name not in AT_PAPER_POINT:
                continue
            try:
                record = load_record(study, tracking_uri)
            except ReportError:
                command = "wb calibrate --budget paper" if point else f"wb ablate {study}"
                summary.append(markdown.row([name, point_title, f"not run yet (`{command}`)", *[""] * 7]))
                continue
            config = config or record.study.cells()[0].config
            link = f"[{study}](../{study}/README.md)"
            for i, axis in enumerate(record.study.axes):
                table = axis_table(record, i)
                if table["mean"].isna().all():  # recorded, but no cell finished: no verdict to count
                    summary.append(markdown.row([link, point_title, axis.name, "no finished cells", *[""] * 6]))
                    statements.append(f"- {study} ({point_title}): no finished cells yet.")
                    continue
                tau, _, tau_p = kendall_tau(table)
                result = outcome(table)
                checks = other_metrics(record, i)
                ours = result["ours"] or "–"
                bar = best_quality(record, axis.name, None if ours == "–" else ours)["bar"]
                verdicts.append((result["agreement"], tau, tau_p, bar))
                summary.append(markdown.row([link, point_title, axis.name, f"`{record.study.metric}`", ours,
                                             "–" if bar is None else "yes" if bar else "**no**", result["papers"] or "–",
                                             result["agreement"], f"{fmt(tau, 2)} ({fmt(tau_p, 2)})" if fmt(tau) else "",
                                             flips_summary(checks)]))
                flipped = [f"`{c['metric']}` ({c['agreement']})" for c in checks[1:] if c["flips"]]
                statements.append(f"- {study} ({point_title}): **{result['agreement']}** with the paper's best "
                                  f"({result['papers']}) by `{record.study.metric}`; "
                                  + (f"flipped by {', '.join(flipped)}" if flipped else "no other logged metric flips it")
                                  + ("" if bar is None else "; our best meets the bar" if bar
                                     else "; our best does **not** meet the bar, so this ranks models still learning")
                                  + (f". Note: {GUIDED[name]}" if name in GUIDED else "") + ".")
                sections += [f"## {study}: {axis.name} ({point_title})", "",
                             markdown_table(table, record.study.metric, base_label(record.study, axis)), "",
                             verdict(table), *other_metrics_lines(checks), ""]
    counted = {state: sum(1 for v in verdicts if v[0] == state) for state in ("agree", "disagree", "unresolved")}
    lines = ["# Table 1 and Table 5 at CPU scale, beside the paper", "",
             "Paper: ImageNet 256, DiT-B/4, 80 epochs, 1-NFE FID-50K. Ours: the CPU proxy each study describes "
             "(its metric; lower is better), mean ± std over seeds, at two operating points: the CPU base that the "
             "studies/table1*.toml run and the paper's defaults (`wb calibrate --budget paper`). Bold: best in the "
             "column; (base): the setting that is the study's base, the same configuration in every sub-table of one "
             "operating point. Only the orders compare; the scales do not. agreement: agree (the paper's best is "
             f"ours and every other setting is worse at p < {ALPHA}, paired t-test over seeds, Holm-corrected per "
             "table), disagree (another best that way, or the paper's best worse than ours), unresolved (the paper's "
             "best within seed noise of ours). flipped by: the other logged metrics under which the agreement "
             "changes. learned (bar): " + "; ".join(f"{k}: {v}" for k, v in BARS.items()) + ".", "",
             "## Summary", "", *summary, "",
             f"Of {len(verdicts)} tables: {counted['agree']} agree with the paper's best setting, {counted['disagree']} "
             f"disagree, {counted['unresolved']} are unresolved; {sum(1 for v in verdicts if v[2] < ALPHA and v[1] > 0)} "
             f"order their settings like the paper and {sum(1 for v in verdicts if v[2] < ALPHA and v[1] < 0)} against "
             f"it at p < {ALPHA} (Kendall tau against no order), the other "
             f"{sum(1 for v in verdicts if not v[2] < ALPHA)} cannot tell the paper's order from a random one; "
             f"in {sum(1 for v in verdicts if v[3])} of {sum(1 for v in verdicts if v[3] is not None)} our best "
             "setting's 1-NFE samples meet the bar.", "", "## Verdict per table", "", *statements, ""]
    if config is not None and config.data.name in BARS:
        lines += ["## The bar", "", *calibration_lines(config.data.name, config.eval.num_samples, config.eval.seed,
                                                        config.data.labels)]
    lines += [*sections, "---", "Generated by `wb report --suite` from the MLflow store.", ""]
    path = out_root / title / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path
