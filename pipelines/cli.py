"""The ``xinterest`` command line: one typer app, one command per pipeline stage.

Commands are a stable interface (benchmarks, Makefile targets and users depend on their
names, flags and output columns). Heavy modules are imported inside each command so that
``xinterest --help`` is instant.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from pipelines.config import Settings, Workdir, get_settings

if TYPE_CHECKING:
    from training.experiment import ExperimentConfig

app = typer.Typer(
    name="xinterest",
    help="Cross-platform user interest modelling: ingest, features, train, recommend, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
log = logging.getLogger("xinterest")

WorkdirOpt = Annotated[
    Path | None, typer.Option("--workdir", "-w", help="Work directory [env XINTEREST_WORKDIR; default .xinterest].")
]
ProfileOpt = Annotated[
    str | None, typer.Option("--profile", help="Feature-store profile: local or prod [env XINTEREST_PROFILE].")
]


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
    )
    for noisy in ("feast", "mlflow", "alembic", "urllib3", "bentoml", "httpx", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:
        _quiet_known_warnings()


KNOWN_WARNINGS = (
    "On demand feature view is an experimental feature",
    "fetch_arrow_table() is deprecated",
    "``noload`` loader strategy is deprecated",
    "Hint: Inferred schema contains integer column(s)",
)


def _quiet_known_warnings() -> None:
    """Hide the third-party warnings every run prints and the user cannot act on (``-v`` shows
    them): Feast's "experimental on-demand view" and deprecations inside ibis and MLflow's
    SQLAlchemy store. Libraries reset the warning filters on import, so the known messages are
    dropped where warnings are shown instead."""
    import os
    import warnings

    # MLflow: the models are logged as Python objects on purpose (their artifacts travel with
    # them), and a progress bar per artifact download is noise in a pipeline log.
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    show = warnings.showwarning

    def quiet(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
        if not any(known in str(message) for known in KNOWN_WARNINGS):
            show(message, category, *args, **kwargs)  # type: ignore[arg-type]

    warnings.showwarning = quiet


def _settings(workdir: Path | None = None, profile: str | None = None) -> tuple[Settings, Workdir]:
    settings = get_settings(workdir=workdir, profile=profile)
    return settings, Workdir.at(settings.workdir)


def _experiment(settings: Settings, epochs: int | None) -> ExperimentConfig:
    """The training configuration for ``train`` and ``retrain``: defaults, the settings' sequence
    length and seed, and ``--epochs`` when given."""
    from dataclasses import replace

    from training.experiment import ExperimentConfig

    config = ExperimentConfig(sequence_length=settings.sequence_length, seed=settings.seed)
    return config if epochs is None else replace(config, train=replace(config.train, epochs=epochs))


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=2)


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="Folder to write the raw logs to.")],
    events: Annotated[int, typer.Option(min=1_000, max=10_000_000, help="Approximate number of events.")] = 200_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Write seeded synthetic multi-platform raw logs (web JSONL, app CSV, mini-program TSV) with ground truth."""
    from pipelines.synthetic import SyntheticConfig
    from pipelines.synthetic import generate as run

    path = run(out, SyntheticConfig(n_events=events, seed=seed), progress=True)
    console.print(f"synthetic raw logs in [bold]{path}[/bold] (ground truth in {path / 'truth'})")


@app.command()
def ingest(
    source: Annotated[
        list[str],
        typer.Option(
            "--source",
            "-s",
            help="ADAPTER[:PATH], repeatable. Adapters: synthetic, douban, taobao, movielens, canonical. "
            "Without PATH, public datasets come from XINTEREST_DATA_DIR and synthetic logs are generated.",
        ),
    ],
    lake: Annotated[Path | None, typer.Option(help="Lake folder [default WORKDIR/lake].")] = None,
    report: Annotated[Path | None, typer.Option(help="Write the ingest report (JSON) here too.")] = None,
    workdir: WorkdirOpt = None,
) -> None:
    """Validate, deduplicate, resolve identities, pseudonymise and commit raw logs to the event lake."""
    from pipelines.adapters import AdapterError, parse_source
    from pipelines.ingest import ingest_sources

    settings, wd = _settings(workdir)
    try:
        specs = [parse_source(s) for s in source]
        result = ingest_sources(specs, wd, settings, report_path=report, progress=True, lake_dir=lake)
    except AdapterError as e:
        raise _fail(str(e)) from e
    print_ingest_report(result.to_dict())


@app.command()
def features(workdir: WorkdirOpt = None, profile: ProfileOpt = None) -> None:
    """Compute the offline feature tables from the lake, `feast apply`, and materialize to the online store."""
    from pipelines.feature_store import FeatureStoreError, refresh

    settings, wd = _settings(workdir, profile)
    try:
        with console.status("building features, applying definitions, materializing"):
            result = refresh(wd, settings)
    except FeatureStoreError as e:
        raise _fail(str(e)) from e
    table = Table(title=f"feature tables in {wd.feature_data}")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, n in result["rows"].items():
        table.add_row(name, f"{n:,}")
    Console().print(table)
    console.print(
        f"materialized in {result['materialize_seconds']:.1f}s ({result['materialized_rows_per_second']:,} rows/s) "
        f"into the {settings.profile} online store; Feast repo: {wd.feature_repo}"
    )


@app.command("training-frame")
def training_frame(
    entities: Annotated[
        Path,
        typer.Option(
            help="CSV or parquet with join keys (person_id, platform, item_id), "
            "event_timestamp (the label time) and request_ts when the service needs it."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Output file, .csv or .parquet.")],
    service: Annotated[str, typer.Option(help="FeatureService: vae_v1 or ranker_v1.")] = "ranker_v1",
    workdir: WorkdirOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """Point-in-time correct training frame for an entity/label frame, through a FeatureService."""
    import pandas as pd

    from pipelines.feature_store import FeatureStoreError, historical_features, open_store

    settings, wd = _settings(workdir, profile)
    frame = pd.read_parquet(entities) if entities.suffix == ".parquet" else pd.read_csv(entities)
    if "event_timestamp" in frame:
        frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    try:
        result = historical_features(open_store(wd, settings), frame, service)
    except FeatureStoreError as e:
        raise _fail(str(e)) from e
    _write_frame(result, out)
    console.print(f"{len(result):,} rows x {result.shape[1]} columns written to {out}")


@app.command("online-features")
def online_features(
    person_id: Annotated[str, typer.Option(help="The person (pseudonymised person_id).")],
    workdir: WorkdirOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """Print one person's online features (sequence, profile, embedding, activity per platform)."""
    import json

    from pipelines.feature_store import PERSON_VIEWS, OnlineReader, open_store

    settings, wd = _settings(workdir, profile)
    reader = OnlineReader(open_store(wd, settings), [*PERSON_VIEWS, "person_activity"])
    result = {view: reader.read_one(view, {"person_id": person_id}) for view in PERSON_VIEWS}
    profile_row = result.get("person_profile") or {}
    result["person_activity"] = {
        p: reader.read_one("person_activity", {"person_id": person_id, "platform": p})
        for p in profile_row.get("platform_names") or []
    }
    print(json.dumps(result, indent=2, default=str))


@app.command()
def train(
    events: Annotated[Path | None, typer.Option(help="Canonical events file (CSV or parquet) to ingest first.")] = None,
    items: Annotated[Path | None, typer.Option(help="Canonical items file (with --events).")] = None,
    links: Annotated[Path | None, typer.Option(help="Identity links file (with --events).")] = None,
    source: Annotated[
        list[str] | None,
        typer.Option("--source", "-s", help="ADAPTER[:PATH] to ingest first, as in `xinterest ingest`."),
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Write the training report (JSON) here too.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum VAE epochs (early stopping decides).")] = None,
    workdir: WorkdirOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """Ingest (optional), build features, apply + materialize, train the VAE and the re-ranker,
    evaluate against baselines, log and register in MLflow."""
    import json

    from pipelines.adapters import AdapterError, parse_source
    from pipelines.adapters.canonical import read as read_canonical
    from pipelines.ingest import ingest, ingest_sources
    from pipelines.train import TrainError
    from pipelines.train import train as run_training

    settings, wd = _settings(workdir, profile)
    try:
        if events is not None:
            result = ingest([read_canonical(events, items, links)], wd, settings, progress=True)
            print_ingest_report(result.to_dict())
        if source:
            result = ingest_sources([parse_source(s) for s in source], wd, settings, progress=True)
            print_ingest_report(result.to_dict())
        config = _experiment(settings, epochs)
        outcome = run_training(wd, settings, config, progress=True)
    except (AdapterError, TrainError) as e:
        raise _fail(str(e)) from e
    print_metrics(outcome.metrics, outcome.classification)
    console.print(
        f"registered xinterest-vae v{outcome.versions.get('vae')}, xinterest-ranker v{outcome.versions.get('ranker')}, "
        f"xinterest-recommender v{outcome.versions.get('recommender')}; champion: v{outcome.champion}"
        f"{' (new)' if outcome.promoted else ''}; MLflow run {outcome.run_id}; {outcome.seconds:.0f}s"
    )
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(outcome.__dict__, indent=2, default=str))


@app.command()
def recommend(
    users: Annotated[Path, typer.Option(help="CSV or parquet with columns platform, user_id.")],
    out: Annotated[Path, typer.Option(help="Output .csv or .parquet: platform, user_id, rank, item_id, score.")],
    k: Annotated[int, typer.Option(min=1, max=200, help="Items per user.")] = 20,
    platform: Annotated[str | None, typer.Option(help="Only this platform's items.")] = None,
    model_version: Annotated[str | None, typer.Option(help="Registered version [default: the champion].")] = None,
    include_seen: Annotated[bool, typer.Option(help="Do not exclude items the person interacted with.")] = False,
    workdir: WorkdirOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """Batch top-K for every (platform, user_id) row; unknown persons get the cold-start list."""
    import pandas as pd
    from rich.progress import track

    from serving.engine import UnknownPlatform
    from serving.loader import LineageMismatch, ModelNotFound, engine

    settings, wd = _settings(workdir, profile)
    frame = pd.read_parquet(users) if users.suffix == ".parquet" else pd.read_csv(users, dtype=str)
    missing = {"platform", "user_id"} - set(frame.columns)
    if missing:
        raise _fail(f"{users} lacks columns {sorted(missing)}")
    try:
        eng = engine(settings, wd, model_version)
        eng.check_platform(platform)
    except (ModelNotFound, LineageMismatch, UnknownPlatform) as e:
        raise _fail(str(e)) from e
    rows = []
    cold = 0
    for p, u in track(
        list(zip(frame["platform"].astype(str), frame["user_id"].astype(str), strict=True)),
        description="recommending",
        console=console,
    ):
        result = eng.recommend(eng.person_of(p, u), k=k, platform=platform, exclude_seen=not include_seen)
        cold += result.cold_start == "popularity"
        rows += [
            {"platform": p, "user_id": u, "rank": i.rank, "item_id": i.item_id, "score": i.score} for i in result.items
        ]
    _write_frame(pd.DataFrame(rows, columns=["platform", "user_id", "rank", "item_id", "score"]), out)
    console.print(
        f"{len(frame):,} users ({cold:,} cold starts) → {len(rows):,} rows in {out}; model v{eng.model_version}"
    )


@app.command()
def promote(
    version: Annotated[str | None, typer.Option(help="Challenger version [default: the latest].")] = None,
    force: Annotated[bool, typer.Option(help="Move the alias without comparing (for humans).")] = False,
    workdir: WorkdirOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """Gate: give the challenger the champion alias only if it is not worse on the frozen holdout."""
    from serving.loader import ModelNotFound
    from training.gate import AUC_TOLERANCE, NDCG_TOLERANCE, GateError
    from training.gate import promote as run_gate

    settings, wd = _settings(workdir, profile)
    try:
        decision = run_gate(wd, settings, version, force)
    except (GateError, ModelNotFound) as e:
        raise _fail(str(e)) from e
    if decision.figures:
        table = Table(
            title=f"gate on the frozen holdout of v{decision.challenger} "
            f"(tolerance: NDCG@20 -{NDCG_TOLERANCE:.0%}, AUC -{AUC_TOLERANCE})"
        )
        for column in ("model", "version", "ndcg@20", "recall@20", "auc"):
            table.add_column(column, justify="right")
        for name, f in decision.figures.items():
            table.add_row(
                name, str(int(f["version"])), f"{f['ndcg@20']:.4f}", f"{f['recall@20']:.4f}", f"{f['auc']:.4f}"
            )
        Console().print(table)
    verdict = "[green]promoted[/green]" if decision.promoted else "[yellow]not promoted[/yellow]"
    console.print(f"v{decision.challenger}: {verdict} ({decision.reason}); champion was v{decision.champion}")
    if not decision.promoted and decision.champion != decision.challenger:
        raise typer.Exit(code=1)


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="HTTP port.")] = 3000,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Worker processes [default: one per core, at most 4].")
    ] = None,
    workdir: WorkdirOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """Serve the champion over REST (BentoML) on the work directory's feature store."""
    import os
    import subprocess
    import sys
    from pathlib import Path as _Path

    settings, wd = _settings(workdir, profile)
    env = {
        **os.environ,
        "XINTEREST_WORKDIR": str(wd.root),
        "XINTEREST_PROFILE": settings.profile,
        "XINTEREST_PORT": str(port),
    }
    if workers:
        env["XINTEREST_SERVING_WORKERS"] = str(workers)
    bentoml = _Path(sys.executable).parent / "bentoml"
    console.print(f"serving on http://127.0.0.1:{port} (docs at /docs, readiness at /readyz)")
    raise typer.Exit(
        subprocess.call([str(bentoml), "serve", "serving.service:XInterest", "--port", str(port)], env=env)
    )


@app.command()
def champion(workdir: WorkdirOpt = None, profile: ProfileOpt = None) -> None:
    """Print the version of xinterest-recommender that holds the champion alias."""
    from mlflow import MlflowClient

    from training import tracking

    settings, wd = _settings(workdir, profile)
    tracking.setup(settings, wd)
    current = tracking.champion_version(MlflowClient())
    if current is None:
        raise _fail("no version holds the champion alias: run `make train`")
    print(current.version)


@app.command()
def retrain(
    epochs: Annotated[int | None, typer.Option(help="Maximum VAE epochs (early stopping decides).")] = None,
    workdir: WorkdirOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """Ingest the feedback log, rebuild features, train a challenger and gate it. Safe on a schedule:
    no new events, no change; a crash leaves the lake and the champion as they were."""

    from pipelines.retrain import retrain as run_retrain
    from pipelines.train import TrainError

    settings, wd = _settings(workdir, profile)
    config = _experiment(settings, epochs)
    try:
        outcome = run_retrain(wd, settings, config, progress=True)
    except TrainError as e:
        raise _fail(str(e)) from e
    print_ingest_report(outcome.ingest)
    if not outcome.changed:
        console.print("no new events in the feedback log: nothing to retrain")
        return
    print_metrics(outcome.metrics)
    if outcome.drift_top:
        console.print("most shifted features (PSI): " + ", ".join(f"{k} {v:.3f}" for k, v in outcome.drift_top[:5]))
    console.print(f"challenger v{outcome.versions.get('recommender')}: {outcome.gate}; champion v{outcome.champion}")


@app.command()
def forget(
    person: Annotated[str | None, typer.Argument(help="The person_id to delete.")] = None,
    user: Annotated[str | None, typer.Option(help="Or a platform account, PLATFORM:USER_ID.")] = None,
    workdir: WorkdirOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """Delete a person everywhere: lake, offline features, online store, feedback log, quarantine."""
    from pipelines.forget import forget as run_forget
    from pipelines.identity import Pseudonymiser
    from pipelines.lake import Lake

    settings, wd = _settings(workdir, profile)
    if (person is None) == (user is None):
        raise _fail("give a PERSON id or --user PLATFORM:USER_ID (one of them)")
    if user is not None:
        platform, _, raw = user.partition(":")
        pseudo = Pseudonymiser(settings.pseudonym_key.get_secret_value())
        persons = Lake(wd.lake).table("persons")
        key = pseudo.user(platform, raw)
        match = (
            persons[(persons["platform"] == platform) & (persons["user_id"] == key)] if persons is not None else None
        )
        if match is None or match.empty:
            raise _fail(f"no account {user} in the lake at {wd.lake}")
        person = str(match["person_id"].iloc[0])
    assert person is not None
    report = run_forget(wd, settings, person)
    console.print(
        f"forgot {report.person_id}: {report.accounts} accounts, {report.lake_events} lake events, feature rows "
        f"{report.feature_rows or 0}, {report.online_keys} online rows, {report.feedback_lines} feedback lines, "
        f"{report.quarantine_rows} quarantined rows"
    )


@app.command()
def push(
    events: Annotated[Path, typer.Option(help="Canonical events file (CSV or parquet).")],
    workdir: WorkdirOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """Push live events in bulk: into the feedback log and the online store (sequence, activity)."""
    from pipelines.adapters import AdapterError
    from pipelines.realtime import push_file

    settings, wd = _settings(workdir, profile)
    try:
        result = push_file(events, wd, settings)
    except AdapterError as e:
        raise _fail(str(e)) from e
    console.print(
        f"read {result['read']}, pushed {result['pushed']} for {result['persons']} persons, "
        f"invalid {result['invalid']} (skipped; retrain quarantines them)"
    )


@app.command()
def drift(
    days: Annotated[int, typer.Option(min=1, help="Length of the last period, in days.")] = 7,
    workdir: WorkdirOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """PSI per feature of the last period's online features vs the training set; report + chart to MLflow."""
    from pipelines.drift import MAJOR, MODERATE, log_to_mlflow
    from pipelines.drift import drift as run_drift

    settings, wd = _settings(workdir, profile)
    try:
        report = run_drift(wd, settings, days)
    except FileNotFoundError as e:
        raise _fail(str(e)) from e
    run_id = log_to_mlflow(report, wd.reports / "drift", settings, wd)
    table = Table(title=f"most shifted features (PSI; moderate > {MODERATE}, major > {MAJOR})")
    table.add_column("feature")
    table.add_column("PSI", justify="right")
    for name, value in report.top:
        table.add_row(name, f"{value:.3f}")
    Console().print(table)
    console.print(f"report in {wd.reports / 'drift'}; MLflow run {run_id}")


def print_metrics(metrics: dict[str, dict[str, float]], classification: dict[str, float] | None = None) -> None:
    table = Table(title="test metrics (full ranking over unseen items)")
    columns = ["recall@10", "ndcg@10", "recall@20", "ndcg@20", "recall@50", "ndcg@50"]
    table.add_column("model")
    for c in columns:
        table.add_column(c, justify="right")
    for model, values in metrics.items():
        table.add_row(model, *(f"{values.get(c, float('nan')):.4f}" for c in columns))
    Console().print(table)
    if classification:
        console.print(
            "re-ranker on test candidates: "
            + ", ".join(
                f"{k} {classification[k]:.3f}"
                for k in ("auc", "precision", "recall", "f1", "accuracy")
                if k in classification
            )
        )


def _write_frame(frame: object, out: Path) -> None:
    import pandas as pd

    assert isinstance(frame, pd.DataFrame)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        frame.to_parquet(out, index=False)
    elif out.suffix == ".csv":
        frame.to_csv(out, index=False)
    else:
        raise _fail(f"{out}: the output must end in .csv or .parquet")


def print_ingest_report(report: dict[str, object]) -> None:
    table = Table(title=f"ingest into {report['lake']}")
    for column in ("source", "read", "accepted", "quarantined", "duplicates"):
        table.add_column(column, justify="left" if column == "source" else "right")
    rows = [*report["sources"], {"source": "total", **report}]  # type: ignore[list-item]
    for row in rows:
        table.add_row(
            str(row["source"]),
            str(row["read"]),
            str(row["accepted"]),
            str(row["quarantined_total"]),
            str(row["duplicates"]),
        )
    Console().print(table)
    reasons = ", ".join(f"{k}: {v}" for k, v in report["quarantined"].items()) or "none"  # type: ignore[union-attr]
    console.print(f"quarantined by reason: {reasons}")
    console.print(
        f"lake: {report['lake_events']} events, {report['persons']} persons; changed: {report['lake_changed']}"
    )


if __name__ == "__main__":  # pragma: no cover
    app()
