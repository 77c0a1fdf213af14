"""``dtmem experiment {plan,run,status,report} FILE``: a whole study from one file.

plan    the DAG (nodes, edges, keys, the resources each node asks for, which are cached)
        and its estimated wall time on this machine; nothing runs
run     set up (plan: every stage config validated, every reference checked, before any
        compute), run the nodes that are not cached (``dtmem.experiment.runner``), clean up
        (the report, the failures); exit 1 if a node failed
status  node states from MLflow alone (while a run is going, too)
report  the comparison table, rebuilt from MLflow for the latest run of the experiment
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from dtmem.experiment.dag import Plan, build_plan

__all__ = ["plan_main", "report_main", "run_main", "status_main"]


def _console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=160)


def _resources(node_resources: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(node_resources.items()) if v) or "-"


def print_plan(plan: Plan, states: dict[str, str], console: Console) -> None:
    table = Table(title=f"experiment {plan.spec.name} ({plan.path}), code {plan.code}")
    for col in ("node", "key", "asks", "upstream", "state"):
        table.add_column(col, no_wrap=col != "upstream")
    for node in plan.nodes.values():
        table.add_row(
            node.name,
            node.key[:12],
            _resources(dict(node.resources)),
            ", ".join(node.upstream) or "-",
            states.get(node.name, "pending"),
        )
    console.print(table)
    console.print(f"{len(plan.nodes)} nodes, {sum(1 for _ in plan.edges())} edges")


def cached_states(plan: Plan) -> dict[str, str]:
    """node -> 'cached' (a finished run whose outputs verify) or 'pending'; changes nothing."""
    from dtmem.experiment.cache import lookup
    from dtmem.tracking import _client, check_tracking, resolve_tracking_uri

    uri = resolve_tracking_uri(plan.spec.tracking.uri)
    check_tracking(uri)
    client = _client(uri)
    exp = client.get_experiment_by_name(plan.spec.tracking.experiment)
    states = {}
    for node in plan.nodes.values():
        found = lookup(
            client, exp.experiment_id if exp else None, node.key, node.stage, retire=False
        )
        states[node.name] = "cached" if found.hit is not None else "pending"
    return states


def estimate_line(plan: Plan, states: dict[str, str]) -> str:
    """The plan's estimated wall time on this machine (``dtmem.experiment.estimate``): the
    runner's schedule on this machine's CPUs, and the node time it packs."""
    from dtmem.experiment.estimate import estimate

    e = estimate(plan, [n for n, s in states.items() if s == "cached"])
    text = (
        f"estimated wall time here: {e.wall_s / 60:.0f} min on {e.cpus:g} CPUs"
        f" ({e.node_s / 60:.0f} min of node time) for {e.to_run} nodes to run"
        f" ({len(plan.nodes) - e.to_run} cached), at the rates of the laptop study's models"
    )
    if e.unknown:
        more = ", ..." if len(e.unknown) > 3 else ""
        text += f"; {len(e.unknown)} not estimated (no rate): {', '.join(e.unknown[:3])}{more}"
    return text


def plan_main(path: Path, overrides: list[str]) -> int:
    plan = build_plan(path, overrides)
    states = cached_states(plan)
    console = _console()
    print_plan(plan, states, console)
    console.print(estimate_line(plan, states))
    return 0


def run_main(path: Path, overrides: list[str], verbose: bool = False) -> int:
    from dtmem.experiment.runner import run_experiment

    console = _console()
    plan = build_plan(path, overrides)  # every check before any compute
    result = run_experiment(plan, say=console.print, verbose=verbose)
    counts = {
        s: sum(1 for o in result.outcomes.values() if o.state == s)
        for s in ("ran", "cached", "failed", "skipped")
    }
    console.print(
        f"experiment {plan.spec.name}: "
        + ", ".join(f"{v} {k}" for k, v in counts.items())
        + f" in {result.wall_s:.0f}s (MLflow run {result.experiment_run_id})"
    )
    if result.report is not None:
        console.print(result.report.markdown)
    for failure in result.failures:
        console.print(f"[red]failed[/] {failure.name}: {failure.error}")
    return 0 if result.ok else 1


def status_main(path: Path, overrides: list[str]) -> int:
    from dtmem.experiment.status import experiment_status

    plan = build_plan(path, overrides)
    latest, rows = experiment_status(plan)
    table = Table(title=f"experiment {plan.spec.name}: latest run {latest or '-'}")
    for col in ("node", "state", "MLflow run", "wall s"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        table.add_row(
            r.name, r.state, r.run_id or "-", "-" if r.wall_s is None else f"{r.wall_s:.1f}"
        )
    _console().print(table)
    return 0


def report_main(path: Path, overrides: list[str]) -> int:
    from dtmem.experiment.runner import make_report
    from dtmem.experiment.status import latest_experiment_run
    from dtmem.tracking import _client, check_tracking, resolve_tracking_uri

    plan = build_plan(path, overrides)
    uri = resolve_tracking_uri(plan.spec.tracking.uri)
    check_tracking(uri)
    client = _client(uri)
    exp = client.get_experiment_by_name(plan.spec.tracking.experiment)
    latest = latest_experiment_run(client, exp.experiment_id, plan.spec.name) if exp else None
    if latest is None:
        raise ValueError(f"{path}: no run of experiment {plan.spec.name!r} in {uri}")
    report = make_report(plan, uri, latest)
    _console().print(report.markdown)
    return 0
