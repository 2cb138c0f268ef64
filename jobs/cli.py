"""The `raytts` command line: thin entry points over actors/ and pipeline/."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from actors.checkpoint import CheckpointError

from .common import failure_line, overrides_from, print_failures
from .report_cli import add_report_parser, report
from .run_cli import add_run_parser, report_table, run
from .synth_cli import add_synth_parser, synth

__all__ = ["failure_line", "main", "parser", "print_failures", "report_table"]


def _export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-onnx",
        help="export a checkpoint as verified ONNX blocks (the onnx backend's model; onnxruntime-only deployments)",
        description="Writes OUTPUT/manifest.json and one .onnx file per block: embed, layers/layer_NN (one graph, "
        "per-layer weights), norm, code_head, text_head, sampling, decoder, dvae_decode, dvae_encode, vocos. Every "
        "block is run by onnxruntime at two shapes and compared with torch; the export fails above 1e-4 relative "
        "error (float32) or 1e-2 (float16). int8 blocks report their error.",
    )
    p.add_argument("--model", required=True, help="checkpoint folder, s3://... URI, hf://2Noise/ChatTTS[@rev], or tiny")
    p.add_argument("--output", required=True, type=Path, help="output folder (replaced if it exists)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--quantize", choices=("none", "int8"), default="none",
                   help="int8: dynamic int8 weights for the GPT layers and heads (from the float32 export)")  # fmt: skip
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: raytts's tested one)")
    p.add_argument("--fsq", choices=("classic", "symmetric"), default="classic", help="DVAE quantiser numerics")
    p.add_argument("--verify", choices=("auto", "always", "never"), default="auto", help="sha256 of official files")


def _export(args: argparse.Namespace) -> int:
    from actors.onnx.export import DEFAULT_OPSET, ExportError, export_checkpoint

    try:
        manifest = export_checkpoint(
            args.model, args.output, dtype=args.dtype, quantize=args.quantize, opset=args.opset or DEFAULT_OPSET,
            fsq=args.fsq, verify=args.verify, progress=print,
        )  # fmt: skip
    except (ExportError, ValueError, ModuleNotFoundError) as err:
        print(f"raytts export-onnx: {err}", file=sys.stderr)
        return 1
    print(f"wrote {len(manifest['blocks'])} verified blocks ({manifest['dtype']}, quantize={manifest['quantize']}, "
          f"opset {manifest['opset']}) to {args.output} in {manifest['export_seconds']} s")  # fmt: skip
    return 0


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="the online endpoint: OpenAI-compatible /v1/audio/speech and native /v1/tts on Ray Serve",
        description="Runs CONFIG (YAML, see jobs/examples/serve.yaml) on local Ray, or on --address, until Ctrl-C. "
        "Binding anything but loopback requires API keys (RAYTTS_API_KEYS).",
    )
    p.add_argument("config", type=Path, nargs="?", default=None, help="serve YAML (flags below override it)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default 8000)")
    p.add_argument(
        "--model",
        default=None,
        help="serve this one checkpoint (folder, URI, hf://..., tiny), named by it (tiny, 2Noise/ChatTTS, the folder's name)",
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override any config field, e.g. --set app.engine.max_slots=32 --set deployment.max_replicas=2",
    )  # fmt: skip


def _checkpoint_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "make-checkpoint",
        help="write a random checkpoint in the exact 2Noise/ChatTTS layout",
        description="Writes DIR/asset/... with random weights (for tests and smoke runs: it speaks noise).",
    )
    p.add_argument("dir", type=Path)
    p.add_argument("--preset", choices=("tiny", "full"), default="tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--eos-gain",
        type=float,
        default=None,
        help="scale of the end-of-audio code's head row (default 1.2); ~1.8 makes rows end at mixed lengths",
    )


def _stage_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stage-model",
        help="copy a checkpoint (hf://, s3://, folder) into a local folder once, checked, for nodes to load from",
        description="Resolves MODEL as a job or Serve app would (download, sha256 check of the official release) and "
        "writes it to DIR/asset/... as a plain local checkpoint, unless DIR already holds the same one. Pods run it "
        "as an init container so every actor of the node loads DIR (model: DIR) without downloading.",
    )
    p.add_argument("model", help="hf://2Noise/ChatTTS[@rev], s3://bucket/chattts, a folder, or tiny")
    p.add_argument("dir", type=Path, help="the folder to stage into (e.g. a volume shared by the node's Ray workers)")
    p.add_argument("--verify", choices=("auto", "always", "never"), default="auto")


def parser() -> argparse.ArgumentParser:
    """The `raytts` command line, every subcommand."""
    root = argparse.ArgumentParser(prog="raytts", description="ChatTTS-compatible speech synthesis at scale")
    root.add_argument("-v", "--verbose", action="store_true")
    sub = root.add_subparsers(dest="command", required=True)
    add_synth_parser(sub)
    add_run_parser(sub)
    _serve_parser(sub)
    _checkpoint_parser(sub)
    _stage_parser(sub)
    _export_parser(sub)
    add_report_parser(sub)
    return root


def main(argv: list[str] | None = None) -> int:
    command_line = parser()
    args = command_line.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "make-checkpoint":
            from actors.checkpoint.random_weights import write_checkpoint

            gain = {} if args.eos_gain is None else {"eos_gain": args.eos_gain}
            asset = write_checkpoint(args.dir, args.preset, args.seed, **gain)
            print(f"wrote random {args.preset} checkpoint (seed {args.seed}) to {asset}")
            return 0
        if args.command == "stage-model":
            from actors.checkpoint import stage

            print(stage(args.model, args.dir, verify=args.verify))
            return 0
        if args.command == "synth":
            return synth(args)
        if args.command == "export-onnx":
            return _export(args)
        if args.command == "run":
            return run(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "report":
            return report(args)
    except (CheckpointError, FileNotFoundError, IsADirectoryError, PermissionError) as err:
        print(f"raytts {args.command}: {err}", file=sys.stderr)
        return 2
    command_line.error(f"unknown command {args.command}")
    return 2


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from actors.serving.config import ServerConfig
    from jobs.serve import run_server

    overrides = overrides_from("serve", args.set)
    if overrides is None:
        return 2
    if args.host:
        overrides["host"] = args.host
    if args.port:
        overrides["port"] = args.port
    if args.model:
        from actors.serving.config import model_label

        overrides["app.models"] = {model_label(args.model): {"source": args.model}}
        overrides["app.default_model"] = model_label(args.model)
    try:
        config = ServerConfig.load(args.config, overrides)
        return run_server(config, address=args.address)
    except (ValidationError, ValueError, OSError) as err:
        print(f"raytts serve: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
