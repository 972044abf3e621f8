"""The benchmark's report as Markdown: the configurations' table, then the training rows.

`markdown` renders what `manualbp.tools.bench` measured (its JSON report); the
numbers are formatted here and nowhere else. Import it from `manualbp.tools.bench`.
"""

from __future__ import annotations

from manualbp.tools.bench_configs import TRAINING, TRAINING_EPOCHS


def markdown(report: dict) -> str:
    """The report as markdown tables."""
    lines = _environment_lines(report["environment"], report["matmul"])
    lines += ["", *_configs_table(report["configs"], report["matmul"])]
    training = report.get("training")
    if training:
        lines += ["", *_training_table(training)]
    return "\n".join([*lines, ""])


def _environment_lines(env: dict, peak: dict) -> list[str]:
    """The device, the jax version, the load at start, and the float32 matmul peak."""
    return [
        f"Device: {env['device']} ({env['cpu_count']} CPUs visible); jax {env['versions']['jax']}; "
        f"load average at start {env['loadavg'][0]:.2f}.",
        f"float32 matmul peak (best median rate over sizes "
        f"{', '.join(str(rate['n']) for rate in peak['sizes'])}; at {peak['n']}): "
        f"{peak['gflops_median']:.1f} GFLOP/s.",
    ]


def _configs_table(configs: list[dict], peak: dict) -> list[str]:
    """One row per configuration: manual against autodiff, the share of the peak,
    per-example gradients; then the note that says how the columns were taken."""
    ci = _ci_header(row["paired_manual_over_autodiff"] for row in configs)
    lines = [
        f"| config | B | manual ms | autodiff ms | manual/autodiff{ci} | manual GFLOP/s "
        "| % of matmul | per-example ms | per-example/batch | new memory ms "
        "| compile s (manual, autodiff) | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in configs:
        m, a, pe = row["manual"], row["autodiff"], row["per_example"]
        if "skipped" in pe:
            pe_ms, pe_ratio, fresh_ms = "skipped", "—", "—"
        else:
            pe_ms, pe_ratio = _ms(pe["median_s"]), f"{pe['ratio_over_batch']:.2f}"
            fresh_ms = _ms(pe["fresh_memory"]["median_s"])
        lines.append(
            f"| {row['config']['name']} | {row['config']['batch']} | {_ms(m['median_s'])} "
            f"| {_ms(a['median_s'])} | {_ratio(row['paired_manual_over_autodiff'])} "
            f"| {m['gflops']:.1f} | {_fraction(row, peak)} | {pe_ms} "
            f"| {pe_ratio} | {fresh_ms} | {m['compile_s']:.2f}, {a['compile_s']:.2f} "
            f"| {row['loadavg_before'][0]:.1f} |"
        )
    lines += [
        "",
        "manual/autodiff: median of the per-round ratios of back-to-back calls"
        + (
            ", with a distribution-free 95% interval for it"
            if ci
            else " (too few rounds for a 95% interval)"
        )
        + ". % of matmul: over the peak above, or, "
        "where it says paired, over the best matmul rate timed in each of the row's own "
        "rounds (the median of those rates in GFLOP/s after 'of'). New memory: the time to return "
        "new arrays of the per-example gradients' shapes, filled with one value (the floor "
        "under materializing them).",
    ]
    return lines


def _training_table(training: dict) -> list[str]:
    """One row per mini-batch size: samples/s of manual, autodiff and the NumPy loop."""
    lines = [
        f"Training {TRAINING.sizes} with SGD, {TRAINING_EPOCHS} epochs per `train` call; "
        "the NumPy loop one epoch (samples/s, median):",
        "",
    ]
    ci_a = _ci_header(row["paired_manual_over_autodiff"] for row in training["batches"])
    ci_n = _ci_header(row["paired_manual_over_numpy"] for row in training["batches"])
    lines += [
        f"| mini-batch | manual | autodiff | manual/autodiff{ci_a} | NumPy loop "
        f"| manual/NumPy{ci_n} |",
        "|---|---|---|---|---|---|",
    ]
    for row in training["batches"]:
        m, a = row["manual"]["samples_per_s"], row["autodiff"]["samples_per_s"]
        lines.append(
            f"| {row['batch_size']} | {m:,.0f} | {a:,.0f} "
            f"| {_ratio(row['paired_manual_over_autodiff'], digits=2)} "
            f"| {row['numpy']['samples_per_s']:,.0f} "
            f"| {_ratio(row['paired_manual_over_numpy'], digits=1, unit='×')} |"
        )
    return lines


def _fraction(row: dict, peak: dict) -> str:
    """Manual GFLOP/s over the matmul peak; paired round by round where measured so."""
    paired = row.get("paired_fraction_of_matmul")
    if paired is None:
        return f"{row['manual']['gflops'] / peak['gflops_median']:.0%}"
    text = f"{paired['median']:.0%}"
    if paired["ci95"]:
        text += f" [{paired['ci95'][0]:.0%}, {paired['ci95'][1]:.0%}]"
    return text + f" of {paired['peak_gflops_median']:.0f}, paired"


def _ci_header(paired_ratios) -> str:
    """ " [95% CI]" over a column where some row has an interval; nothing over medians alone."""
    return " [95% CI]" if any(paired["ci95"] for paired in paired_ratios) else ""


def _ratio(paired: dict, digits: int = 3, unit: str = "") -> str:
    text = f"{paired['median']:.{digits}f}{unit}"
    if paired["ci95"]:
        low, high = paired["ci95"]
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g}" if seconds < 10 else f"{seconds * 1e3:.0f}"
