"""``poets retrain`` and ``poets label``: TensorFlow for Poets' two scripts, on TF 2."""

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple, Type

from poets.cli.feedback import Bars, or_dash, print_accuracy, tensorboard_run
from poets.engine.errors import InvalidInput
from poets.engine.model.config import Param, TrainConfig
from poets.engine.settings import Settings
from poets.engine.workspace import Workspace


def _parser_for(spec: Param) -> Callable[[str], Any]:
    """The parameter's own parsing, reported the argparse way."""

    def parse(text: str) -> Any:
        try:
            return spec.parse(text)
        except InvalidInput as exc:
            raise argparse.ArgumentTypeError(exc.detail) from None

    parse.__name__ = spec.kind.__name__  # argparse names the type in its messages
    return parse


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    """retrain.py's flags, same names and defaults, plus Poets' own (from poets.engine.model.config)."""
    for spec in sorted(TrainConfig.parameters(), key=lambda spec: spec.name):
        flag = "--" + spec.name
        if spec.kind is bool:
            parser.add_argument(flag, action="store_true", default=None, help=spec.cli_help())
        else:
            parser.add_argument(
                flag,
                type=_parser_for(spec),
                default=None,
                metavar=spec.kind.__name__.upper(),
                help=spec.cli_help(),
            )


def register(commands: Any) -> None:
    """Add ``retrain``, ``label``, ``import`` and ``models`` to the ``poets`` sub-commands."""
    _add_retrain(commands)
    _add_label(commands)
    _add_import(commands)
    _add_models(commands)


def _add_retrain(commands: Any) -> None:
    retrain = commands.add_parser(
        "retrain",
        help="retrain a new head on a folder of labelled images (like retrain.py)",
        description="Transfer learning as TensorFlow for Poets does it: bottlenecks from a frozen "
        "backbone, cached, then a new softmax head.",
    )
    retrain.add_argument("--image_dir", required=True, type=Path, help="one sub-folder of images per label")
    retrain.add_argument(
        "--output_dir",
        type=Path,
        default=None,
        help="model store to publish into (default: $POETS_HOME/models)",
    )
    retrain.add_argument("--name", default=None, help="model name (default: $POETS_DEFAULT_MODEL)")
    retrain.add_argument(
        "--bottleneck_dir",
        type=Path,
        default=None,
        help="bottleneck cache (default: $POETS_HOME/bottlenecks)",
    )
    retrain.add_argument(
        "--summaries_dir",
        type=Path,
        default=None,
        help="TensorBoard runs, one folder per retrain in it (default: $POETS_LOGS_DIR/<name>)",
    )
    _add_train_flags(retrain)
    retrain.set_defaults(run=run_retrain, tensorflow=True)

    retrain.add_argument(
        "--url", default=None, help="run the job on a Poets service at this URL instead of here"
    )
    retrain.add_argument(
        "--wait", action="store_true", help="with --url: follow the job to its end and print its metrics"
    )


def _add_label(commands: Any) -> None:
    label = commands.add_parser("label", help="label images with a model (like label_image.py)")
    label.add_argument(
        "--model",
        default=None,
        help="a version folder, a model folder (its current version), or a model "
        "name in the store; with --url, a model name on the service",
    )
    label.add_argument("--url", default=None, help="ask a Poets service at this URL")
    label.add_argument("--top_k", type=int, default=5)
    label.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    label.set_defaults(run=run_label, tensorflow=True)


def _add_import(commands: Any) -> None:
    imported = commands.add_parser(
        "import",
        help="serve an existing TensorFlow for Poets model (retrained_graph.pb)",
        description="Register a TensorFlow for Poets frozen graph as a new version; the flags "
        "are label_image.py's.",
    )
    imported.add_argument("--graph", required=True, type=Path)
    imported.add_argument("--labels", required=True, type=Path)
    imported.add_argument("--input_layer", default="input")
    imported.add_argument("--output_layer", default="final_result")
    imported.add_argument("--input_height", type=int, default=224)
    imported.add_argument("--input_width", type=int, default=224)
    imported.add_argument("--input_mean", type=float, default=128.0)
    imported.add_argument("--input_std", type=float, default=128.0)
    imported.add_argument("--name", required=True, help="model name in the store")
    imported.add_argument(
        "--output_dir", type=Path, default=None, help="model store (default: $POETS_HOME/models)"
    )
    imported.set_defaults(run=run_import, tensorflow=True)


def _add_models(commands: Any) -> None:
    models = commands.add_parser(
        "models",
        help="list the models: versions, the current one and the pin",
        description="Every model in the store (or, with --url, of a running service): its "
        "versions, the one served, and the pinned one (a retrain does not replace "
        "a pinned version).",
    )
    models.add_argument(
        "--output_dir", type=Path, default=None, help="model store (default: $POETS_HOME/models)"
    )
    models.add_argument("--url", default=None, help="ask a Poets service at this URL")
    models.set_defaults(run=run_models)


def _config(args: argparse.Namespace) -> TrainConfig:
    given: Dict[str, Any] = {
        name: getattr(args, name) for name in TrainConfig().to_dict() if getattr(args, name, None) is not None
    }
    return TrainConfig.from_dict(given)


def run_retrain(args: argparse.Namespace, settings: Settings) -> int:
    from poets.engine.model.bottlenecks import BottleneckCache
    from poets.engine.promotion import policy_of
    from poets.engine.retrain import retrain

    config = _config(args)
    # With --url the service applies its own limits (POETS_MAX_TRAINING_STEPS...), not ours.
    config.validate(None if args.url else settings)
    if args.url:
        return _retrain_remote(args, config)
    name = args.name or settings.default_model
    workspace = _workspace(args, settings)
    store = workspace.store
    bars = Bars()
    try:
        cache = (
            BottleneckCache(args.bottleneck_dir, workspace.shared_bottlenecks)
            if args.bottleneck_dir
            else workspace.bottlenecks
        )
        result = retrain(
            args.image_dir,
            config,
            store,
            cache,
            settings.backbone_dir,
            name=name,
            summaries_dir=tensorboard_run(args.summaries_dir or settings.logs_dir / name),
            progress=bars,
            max_pixels=settings.max_image_pixels,
            promote=policy_of(settings),
        )
    finally:
        bars.close()
    for path, reason in result.skipped:
        print("skipped {}: {}".format(path, reason), file=sys.stderr)
    metrics = result.metrics
    if config.print_misclassified_test_images:
        print("=== MISCLASSIFIED TEST IMAGES ===")
        for miss in metrics["misclassified"]:
            print("{:>70}  {}".format(miss["path"], miss["predicted"]))
    print(
        "Bottlenecks: {} computed, {} from cache".format(
            result.bottlenecks_computed, result.bottlenecks_cached
        )
    )
    shared = result.bottlenecks_shared
    if shared is not None:
        print(
            "Shared bottlenecks: {} pulled, {} pushed{}".format(
                shared["pulled"],
                shared["pushed"],
                "; bucket not reachable, computed here" if shared["unavailable"] else "",
            )
        )
    print("Published {} version {} at {}".format(result.name, result.version, result.path))
    print_accuracy(metrics)
    return 0


def run_models(args: argparse.Namespace, settings: Settings) -> int:
    if args.url:
        from poets.cli.client import Client

        rows = Client(args.url).call("GET", "/models")["models"]
    else:
        store = _workspace(args, settings).store
        rows = [
            {
                "name": name,
                "versions": store.versions(name),
                "current_version": store.current(name),
                "pinned_version": store.pinned(name),
            }
            for name in store.names()
        ]
    if not rows:
        print("No models yet: poets retrain --image_dir DIR", file=sys.stderr)
        return 0
    print("{:<24} {:>8} {:>8}  {}".format("MODEL", "CURRENT", "PINNED", "VERSIONS"))
    for row in rows:
        print(
            "{:<24} {:>8} {:>8}  {}".format(
                row["name"],
                or_dash(row.get("current_version")),
                or_dash(row.get("pinned_version")),
                " ".join(str(v) for v in row.get("versions") or []) or "-",
            )
        )
    return 0


def _retrain_remote(args: argparse.Namespace, config: TrainConfig) -> int:
    from poets.cli.client import Client, wait

    fields = config.to_form()
    if args.name:
        fields["name"] = args.name
    client = Client(args.url)
    job = client.retrain(args.image_dir, fields)
    print("Job {} queued: {}/jobs/{}".format(job["job_id"], args.url.rstrip("/"), job["job_id"]))
    if not args.wait:
        return 0
    bars = Bars()
    try:
        job = wait(client, job["job_id"], bars)
    finally:
        bars.close()
    if job["state"] != "succeeded":
        print("Job {}: {}".format(job["state"], job.get("error") or ""), file=sys.stderr)
        return 1
    result = job.get("result") or {}
    print("Published {} version {}".format(result.get("name", job.get("name")), job.get("version")))
    print_accuracy(result.get("metrics") or {})
    return 0


def run_import(args: argparse.Namespace, settings: Settings) -> int:
    from poets.engine.graph_import import import_graph

    store = _workspace(args, settings).store
    version = import_graph(
        store,
        args.name,
        args.graph,
        args.labels,
        args.input_layer,
        args.output_layer,
        args.input_height,
        args.input_width,
        args.input_mean,
        args.input_std,
    )
    print("Published {} version {} at {}".format(args.name, version, store.path(args.name, version)))
    return 0


def _workspace(args: argparse.Namespace, settings: Settings) -> Workspace:
    """The workspace of ``settings``, with the store of ``--output_dir`` when one is given."""
    if getattr(args, "output_dir", None):
        settings = dataclasses.replace(settings, model_dir=args.output_dir, store_url=None)
    return Workspace(settings)


def resolve_model(spec: str, settings: Settings) -> Path:
    """The version folder to label with.

    ``spec`` is a version folder, a model folder (its current version), a model store such as
    ``poets retrain --output_dir DIR`` writes (the default model there, or its only model), or
    a model name in the configured store.
    """
    from poets.engine.errors import NotFound
    from poets.engine.store.models import METADATA_FILE, ModelStore, VersionStore

    store: VersionStore
    path = Path(spec)
    if (path / METADATA_FILE).is_file():
        return path
    if path.is_dir():
        if ModelStore(path.parent).versions(path.name):
            store, name = ModelStore(path.parent), path.name
        else:
            store = ModelStore(path)
            name = _store_model(store, settings.default_model, spec)
    elif "/" not in spec and "\\" not in spec:
        store, name = Workspace(settings).store, spec
    else:
        raise NotFound("No model at {}: no such folder.".format(spec))
    version = store.current(name)
    if version is None:
        raise NotFound(
            "No model at {}: give a version folder, a model folder, a model store or a "
            "model name in {}.".format(spec, settings.store_dir)
        )
    return store.path(name, version)


def _store_model(store: Any, default: str, spec: str) -> str:
    """The model to use in a whole store: the default model, else the only one."""
    from poets.engine.errors import NotFound
    from poets.engine.store.models import model_meant

    names = [name for name in store.names() if store.current(name) is not None]
    meant = model_meant(names, default)
    if meant is not None:
        return meant
    if not names:
        raise NotFound("No model at {}: the folder holds no model version.".format(spec))
    raise NotFound(
        "{} holds several models ({}) and none is named {!r} (POETS_DEFAULT_MODEL): give {}/<name>.".format(
            spec, ", ".join(names), default, spec
        )
    )


def run_label(args: argparse.Namespace, settings: Settings) -> int:
    """label_image.py's output for each image, from a local model or a service (--url)."""
    from poets.engine.errors import InvalidImage, InvalidInput

    if args.url:
        from poets.cli.client import Client, ServiceError

        client = Client(args.url)
        failures: Tuple[Type[BaseException], ...] = (OSError, ServiceError)

        def label(image: Path) -> List[Tuple[str, float]]:
            answer = client.label(image, args.top_k, args.model)
            return [(entry["label"], entry["score"]) for entry in answer["labels"]]
    else:
        from poets.engine.predictor import Predictor

        if not args.model:
            raise InvalidInput("Give --model (a version folder, model folder or model name) or --url.")
        predictor = Predictor(resolve_model(args.model, settings))
        failures = (OSError, InvalidImage)

        def label(image: Path) -> List[Tuple[str, float]]:
            return predictor.label([image.read_bytes()], args.top_k, settings.max_image_pixels)[0]

    status = 0
    for image in args.images:
        try:
            results = label(image)
        except failures as exc:
            print("{}: {}".format(image, getattr(exc, "detail", exc)), file=sys.stderr)
            status = 1
            continue
        if len(args.images) > 1:
            print(image)
        for name, score in results:
            print("{} (score={:.5f})".format(name, score))
    return status
