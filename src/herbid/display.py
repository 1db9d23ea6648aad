"""Human-readable terminal output of the CLI and the demo (rich tables); ``--json`` bypasses all of it."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


def show_mapping(title: str, data: dict[str, Any]) -> None:
    table = Table(title=title, show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in data.items():
        if isinstance(value, dict) and len(value) > 12:
            value = f"{len(value)} entries"
        table.add_row(str(key), str(value))
    console.print(table)


def show_build(result: Any) -> None:
    report = result.report
    show_mapping(f"built {result.out}", report["counts"])
    if report["problems_by_reason"]:
        table = Table(title="dropped, quarantined, converted or reported (details in report.json)")
        table.add_column("reason")
        table.add_column("n", justify="right")
        for reason, n in sorted(report["problems_by_reason"].items(), key=lambda kv: -kv[1])[:25]:
            table.add_row(reason, str(n))
        console.print(table)


def show_split(data: dict[str, Any]) -> None:
    show_mapping("split", {k: v for k, v in data.items() if not isinstance(v, (dict, list))})
    if data.get("unsplittable_species"):
        console.print(f"[yellow]species too small to split (all in train): {', '.join(data['unsplittable_species'])}")
    if data.get("mode") == "collector" and data.get("unknown_collector"):
        console.print(f"[yellow]{data['unknown_collector']} of {data['images']} images have no collector: "
                      "each is its own group (no collector bias can be ruled out for them)")


def show_audit(audit: dict[str, Any]) -> None:
    leaks = {k: audit[k] for k in ("groups_in_both", "identical_images_across", "near_duplicates_across")}
    show_mapping("audit (all 0 = no leak)", leaks)
    counts = audit.get("class_counts", {})
    if counts:
        table = Table(title="images per species and split")
        table.add_column("species")
        splits = sorted(counts)
        for name in splits:
            table.add_column(name, justify="right")
        species = sorted({s for per in counts.values() for s in per})
        for name in species:
            table.add_row(name, *(str(counts[split].get(name, 0)) for split in splits))
        console.print(table)
