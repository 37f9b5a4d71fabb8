"""Tables of the benchmark results: markdown for ``results/table.md`` and for stdout."""

from typing import Any, Dict, List, Optional

from catalog import EXTENSIONS, LABELS, LIBRARIES, MONTE_CARLO

SIDE_BY_SIDE = ("backpack_core", "backpack")

MEMORY_NOTE = (
    "Memory: peak resident memory (RSS) increase of the process during the first "
    "forward+backward with the extension at the benchmark batch size, over the RSS right "
    "before it (after setup: net copies, data, one single-sample plain step). Measured {how}. "
    "It includes what the step allocates and frees (activations, gradients, the extension's "
    "outputs and intermediates), not the weights."
)


def _fmt_ratio(value: float) -> str:
    return f"{value:.2f}" if value < 1 else f"{value:.1f}"


def _fmt_seconds(value: Optional[float]) -> str:
    if value is None:
        return "–"
    return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"


def _fmt_mib(value: Optional[float]) -> str:
    return "–" if value is None else (f"{value:.0f}" if value >= 10 else f"{value:.1f}")


def _short(text: str, limit: int = 70) -> str:
    text = text.replace("|", "/").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_failed(check: Optional[Dict[str, Any]], rtol: float) -> bool:
    """Whether a correctness check is a mismatch (shape difference, or above ``rtol``)."""
    if not check or check.get("note"):
        return False
    if not check["shapes_equal"]:
        return True
    rel = check.get("rel_diff")
    return rel is not None and rel > rtol


def lib_cell(cell: Dict[str, Any], library: str, field: str, rtol: float) -> str:
    """One library's entry of a table cell: a ratio, seconds or MiB, or why there is none."""
    entry = cell["libs"].get(library)
    if entry is None:
        return "–"
    if field == "mem_mib":
        return _fmt_mib(entry.get("mem_mib")) if entry.get("mem_mib") is not None else "–"
    if entry.get("status") != "ok":
        return _short(entry.get("status", "–"))
    if field == "ratio":
        text = _fmt_ratio(entry["ratio"])
    else:
        text = _fmt_seconds(entry["median_s"])
    if check_failed(cell.get("checks", {}).get(library), rtol):
        text += " (MISMATCH)"
    return text


def _row_label(result: Dict[str, Any], net: str) -> str:
    return f"{net} ({result['batch_sizes'][net]})"


def _cells_of(result: Dict[str, Any], net: str) -> Dict[str, Dict[str, Any]]:
    return {c["extension"]: c for c in result["cells"] if c["net"] == net}


def main_table(result: Dict[str, Any], field: str) -> List[str]:
    """Nets x extensions, each cell ``backpack_core / BackPACK`` (ratio or memory)."""
    rtol = result["settings"]["rtol"]
    exts = [e for e in result["settings"]["extensions"]]
    first = "plain fwd+bwd" if field == "ratio" else "plain (MiB)"
    titles = [EXTENSIONS.get(e, e) for e in exts]
    lines = [
        "| net (batch) | " + " | ".join([first, *titles]) + " |",
        "|---" * (len(exts) + 2) + "|",
    ]
    for net in result["settings"]["nets"]:
        cells = _cells_of(result, net)
        plain = result["plain"].get(net, {})
        if field == "ratio":
            first_value = _fmt_seconds(plain.get("median_s"))
        else:
            first_value = _fmt_mib(plain.get("mem_mib"))
        row = [_row_label(result, net), first_value]
        for ext in exts:
            cell = cells.get(ext)
            if cell is None:
                row.append("")
                continue
            row.append(" / ".join(lib_cell(cell, lib, field, rtol) for lib in SIDE_BY_SIDE))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def per_sample_table(result: Dict[str, Any]) -> List[str]:
    """Per-sample gradients by every library: ratio over plain (median seconds)."""
    rtol = result["settings"]["rtol"]
    libs = list(LIBRARIES)
    lines = [
        "| net (batch) | plain fwd+bwd | " + " | ".join(LABELS[lib] for lib in libs) + " |",
        "|---" * (len(libs) + 2) + "|",
    ]
    for net in result["settings"]["nets"]:
        cell = _cells_of(result, net).get("BatchGrad")
        if cell is None:
            continue
        row = [_row_label(result, net), _fmt_seconds(result["plain"].get(net, {}).get("median_s"))]
        for lib in libs:
            entry = cell["libs"].get(lib)
            if entry is not None and entry.get("status") == "ok":
                text = f"{_fmt_ratio(entry['ratio'])} ({_fmt_seconds(entry['median_s'])})"
                if check_failed(cell.get("checks", {}).get(lib), rtol):
                    text += " (MISMATCH)"
            else:
                text = lib_cell(cell, lib, "ratio", rtol)
            mem = entry.get("mem_mib") if entry else None
            if mem is not None:
                text += f", {_fmt_mib(mem)} MiB"
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    return lines


def check_rows(result: Dict[str, Any], only_failures: bool = False) -> List[str]:
    """The correctness checks against backpack_core, one row per (net, extension, library)."""
    rtol = result["settings"]["rtol"]
    lines = [
        "| net | extension | library vs backpack_core | result | max abs diff | rel diff "
        "| largest in |",
        "|---|---|---|---|---|---|---|",
    ]
    count = 0
    for cell in result["cells"]:
        for library, check in cell.get("checks", {}).items():
            failed = check_failed(check, rtol)
            if only_failures and not failed:
                continue
            if check.get("note"):
                verdict = f"not compared: {check['note']}"
            elif not check["shapes_equal"]:
                verdict = "MISMATCH (shapes)"
            elif check.get("shapes_only"):
                verdict = "shapes equal (Monte-Carlo: values random)"
            else:
                verdict = "MISMATCH" if failed else "ok"
            diff, rel = check.get("max_abs_diff"), check.get("rel_diff")
            diff = "–" if diff is None else f"{diff:.3g}"
            rel = "–" if rel is None else f"{rel:.3g}"
            lines.append(
                f"| {cell['net']} | {cell['extension']} | {LABELS[library]} | {verdict} | "
                f"{diff} | {rel} | {check.get('worst') or '–'} |"
            )
            count += 1
    return lines if count else []


def markdown(result: Dict[str, Any]) -> str:
    """The whole report as markdown."""
    m, s = result["machine"], result["settings"]
    libs_note = "; ".join(f"{LABELS[k]}: {v}" for k, v in result["unavailable"].items())
    out = [
        "# backpack_core vs BackPACK 1.7.1 on DeepOBS 1.1.2 nets",
        "",
        f"Machine: {m['cpu']} ({m['cores']} cores), torch {m['torch']} "
        f"({m['threads']} threads), device {s['device']}, Python {m['python']}; "
        f"load average {m['load_start']} at start, {m.get('load_end')} at end. "
        f"Versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}. "
        f"Date {m['date']}.",
        "",
        *(
            [
                f"**The machine was loaded (load average {m['load_start']} on {m['cores']} "
                "cores): timings are noisy.**",
                "",
            ]
            if float(m["load_start"].split()[0]) > 0.5 * (m["cores"] or 1)
            else []
        ),
        f"Settings: repeats {s['repeats']} (after {s['warmup']} warm-up steps, fewer for a "
        f"library whose steps do not fit the cell's time budget: see results.json), "
        f"cell timeout {s['cell_timeout']} s, memory limit {s['memory_limit_gib']} GiB, "
        f"{'one fresh process per cell' if not s['reuse_process'] else 'one reused process'}"
        f"{', QUICK MODE (smoke test, numbers not meaningful)' if s['quick'] else ''}; "
        "random data, CrossEntropyLoss(mean), DeepOBS's `flatten` replaced by `nn.Flatten` "
        "for every library." + (f" Not measured: {libs_note}." if libs_note else ""),
        "",
        "## Extensions: cost over plain forward+backward, `backpack_core / BackPACK`",
        "",
        "Median over the repeats of (forward+backward with the extension) / (plain "
        "forward+backward of an un-extended copy of the same net, timed right before it), "
        "both libraries in the same process, interleaved. `plain fwd+bwd`: median seconds.",
        "",
        *main_table(result, "ratio"),
        "",
        "## Per-sample gradients: ratio over plain (median seconds), peak memory",
        "",
        *per_sample_table(result),
        "",
        "## Peak memory (MiB), `backpack_core / BackPACK`",
        "",
        MEMORY_NOTE.format(how=s["memory_how"]),
        "",
        *main_table(result, "mem_mib"),
        "",
        "## Correctness: each library's result against backpack_core's (one seeded step)",
        "",
        f"Deterministic extensions: values compared, MISMATCH when max|a-b| / max|ref| > "
        f"{s['rtol']:g} for some tensor. Monte-Carlo extensions "
        f"({', '.join(sorted(MONTE_CARLO))}): shapes only. Per-sample gradients of torch.func "
        "and Opacus are scaled by 1/N to BatchGrad's convention.",
        "",
        *(check_rows(result) or ["No cross-library comparison was run."]),
        "",
    ]
    return "\n".join(out)
