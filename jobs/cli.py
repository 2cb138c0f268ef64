"""The `raytts` command line: thin entry points over actors/ and pipeline/."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from actors.audio import AUDIO_FORMATS
from actors.checkpoint import CheckpointError
from actors.settings import (
    NORMALIZE_HELP,
    STRICT_TEXT_HELP,
    EngineSettings,
    OnnxSettings,
    RefineSettings,
    SamplingSettings,
    resolve_path,
)
from actors.text import DEFAULT_NORMALIZE, NORMALIZE_MODES

# Sampling flags of `raytts synth`, as --NAME for the code stage and --refine-NAME for the refine-text stage.
SAMPLING_FLAGS = (
    ("temperature", float),
    ("top_p", float),
    ("top_k", int),
    ("repetition_penalty", float),
    ("max_new_tokens", int),
    ("min_new_tokens", int),
    ("seed", int),
)


def _synth_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="synthesise a JSONL file in-process (no Ray) to Parquet",
        description="Each input line is {'id': str, 'text': str} (no id: one from file and line) with optional speaker, seed, sampling overrides, "
        "reference_audio (+ reference_text) or reference_codes. Writes OUTPUT/part-00000.parquet and "
        "OUTPUT/_report.json. Exit status 1 when any row failed.",
    )
    p.add_argument("--model", default=None, help="checkpoint folder, s3://... URI, hf://2Noise/ChatTTS[@rev], or tiny")
    p.add_argument("--input", required=True, type=Path, help="JSONL file of rows")
    p.add_argument("--output", required=True, type=Path, help="output folder (part-00000.parquet is overwritten)")
    p.add_argument("--speaker", default=None, help="default speaker: 'seed:N' or an upstream speaker string")
    for name, kind in SAMPLING_FLAGS:
        field = SamplingSettings.model_fields[name]  # the defaults of every front end (actors/settings.py)
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=field.default, help=field.description)
    p.add_argument("--save-codes", action="store_true", help="also store the [T, 4] audio codes")
    p.add_argument("--normalize", choices=NORMALIZE_MODES, default=DEFAULT_NORMALIZE, help=NORMALIZE_HELP)
    p.add_argument(
        "--no-normalize", dest="normalize", action="store_const", const="off", help="the same as --normalize off"
    )
    p.add_argument("--strict-text", action="store_true", help=STRICT_TEXT_HELP)
    refine = p.add_argument_group("refine-text stage (upstream's, on by default; rows may override it: `refine`)")
    refine.add_argument(
        "--no-refine", action="store_true", help="skip the refine-text stage (upstream's skip_refine_text)"
    )
    refine.add_argument("--refine-only", action="store_true", help=RefineSettings.model_fields["only"].description)
    refine.add_argument("--refine-prompt", default="", help=RefineSettings.model_fields["prompt"].description)
    for name, kind in SAMPLING_FLAGS:  # the refine stage's own, as --refine-NAME
        field = RefineSettings.model_fields[name]
        refine.add_argument(
            f"--refine-{name.replace('_', '-')}", type=kind, default=field.default, help=field.description
        )
    p.add_argument("--decoder", choices=("hidden", "dvae"), default="hidden")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None)
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=None,
        help="most rows generating at once (engine.max_slots; default: as many as the memory budget holds, 64 on CPU)",
    )
    p.add_argument("--budget-mib", type=int, default=None, help=EngineSettings.model_fields["budget_mib"].description)
    p.add_argument("--max-segment-tokens", type=int, default=120, help="longer text is split at sentence ends")
    p.add_argument("--fsq", choices=("classic", "symmetric"), default="classic", help="DVAE quantiser numerics")
    p.add_argument("--verify", choices=("auto", "always", "never"), default="auto", help="sha256 of official files")
    p.add_argument(
        "--compile", choices=("off", "inductor", "cudagraphs"), default="off", help="torch.compile the decode step"
    )
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help=EngineSettings.model_fields["backend"].description)  # fmt: skip
    p.add_argument("--onnx-path", default=None, help=OnnxSettings.model_fields["path"].description)
    p.add_argument("--onnx-quantize", choices=("none", "int8"), default=OnnxSettings.model_fields["quantize"].default,
                   help=OnnxSettings.model_fields["quantize"].description)  # fmt: skip
    p.add_argument("--audio-format", choices=tuple(AUDIO_FORMATS), default="flac")


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
    except (ExportError, ValueError) as err:
        print(f"raytts export-onnx: {err}", file=sys.stderr)
        return 1
    print(f"wrote {len(manifest['blocks'])} verified blocks ({manifest['dtype']}, quantize={manifest['quantize']}, "
          f"opset {manifest['opset']}) to {args.output} in {manifest['export_seconds']} s")  # fmt: skip
    return 0


def _run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="the offline job: Ray Data from text/speaker shards to Parquet and audio objects (resumable)",
        description="Runs CONFIG (YAML, see jobs/examples/job.yaml) on local Ray, or on --address. Re-running the "
        "same config after a crash or an edit of the inputs or settings redoes only what changed. Exit status: 0 all "
        "rows ok; 1 rows failed, an input problem, or the output does not hold every input row once; 2 the job could "
        "not start (config, output, model, another driver on the output); 3 another driver took the output over.",
    )
    p.add_argument("config", type=Path, nargs="?", default=None, help="job YAML (flags below override it)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--input", action="append", default=None, help="text shard/folder/glob (repeatable)")
    p.add_argument("--speakers", action="append", default=None, help="reference-speaker shard (repeatable)")
    p.add_argument("--output", default=None, help="output folder or URI")
    p.add_argument("--model", default=None)
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override any config field, e.g. --set actors.size=2 --set sampling.temperature=0.5 (YAML values)",
    )  # fmt: skip


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raytts", description="ChatTTS-compatible speech synthesis at scale")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _synth_parser(sub)
    _run_parser(sub)
    _serve_parser(sub)
    _checkpoint_parser(sub)
    _stage_parser(sub)
    _export_parser(sub)
    args = parser.parse_args(argv)
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
            return _synth(args)
        if args.command == "export-onnx":
            return _export(args)
        if args.command == "run":
            return _run(args)
        if args.command == "serve":
            return _serve(args)
    except (CheckpointError, FileNotFoundError, IsADirectoryError, PermissionError) as err:
        print(f"raytts {args.command}: {err}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2


def failure_line(failure: dict) -> str:
    """`FAILED <where>: <why>` for one failed row. A row's error already starts with its location (file:line) when
    it came from the input; it is then printed as is, not after its location a second time."""
    error = failure.get("error") or ""
    source, row_id = failure.get("source"), failure.get("id")
    located = not source or error.startswith(f"{source}:")
    if row_id is None:
        return f"FAILED {error}" if located else f"FAILED {source}: {error}"
    return f"FAILED {row_id!r}{'' if located else f' at {source}'}: {error}"


def print_failures(failures: list[dict], report_path: str, shown: int = 20) -> None:
    for failure in failures[:shown]:
        print(failure_line(failure), file=sys.stderr)
    if len(failures) > shown:
        print(f"... and {len(failures) - shown} more failures (see {report_path})", file=sys.stderr)


def _overrides(command: str, items: list[str]) -> dict | None:
    import yaml

    overrides: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"raytts {command}: --set expects KEY=VALUE, got {item!r}", file=sys.stderr)
            return None
        overrides[key] = yaml.safe_load(value)
    return overrides


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from actors.serving.config import ServerConfig
    from jobs.serve import run_server

    overrides = _overrides("serve", args.set)
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


def _run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from pipeline.config import JobConfig
    from pipeline.job import LeaseLost, ModelUnusable, OutputBusy, OutputUnusable, PoolDoesNotFit, run_job

    overrides = _overrides("run", args.set)
    if overrides is None:
        return 2
    # Paths given as flags are relative to where the command runs (paths in the YAML: to the YAML's folder).
    if args.input:
        overrides["inputs.text"] = [_from_cwd(p) for p in args.input]
    if args.speakers:
        overrides["inputs.speakers"] = [_from_cwd(p) for p in args.speakers]
    if args.output:
        overrides["output.path"] = _from_cwd(args.output)
    if args.model:
        overrides["model"] = _from_cwd(args.model)
    try:
        config = JobConfig.load(args.config, overrides)
    except (ValidationError, ValueError, OSError) as err:
        print(f"raytts run: invalid job config: {err}", file=sys.stderr)
        return 2
    try:
        report = run_job(config, address=args.address)
    except (PoolDoesNotFit, OutputUnusable, ModelUnusable, OutputBusy, OSError) as err:
        print(f"raytts run: {err}", file=sys.stderr)
        return 2
    except LeaseLost as err:
        print(f"raytts run: {err}", file=sys.stderr)
        return 3
    summary = report.to_dict()
    failures = summary.pop("failures")
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    print(report_table(summary), file=sys.stderr)
    for problem in report.problems:
        print(f"INPUT PROBLEM {problem}", file=sys.stderr)
    print_failures(failures, f"{report.output}/_report.json")
    return report.exit_status


def _from_cwd(path: str) -> str:
    return resolve_path(path, Path.cwd())


def report_table(summary: dict) -> str:
    """The job report as aligned text: totals, then one line per engine worker."""
    lines = [
        f"rows {summary['rows']}  ok {summary['ok']}  failed {summary['failed']}  this run {summary['this_run']}  "
        f"skipped (finished earlier) {summary['skipped_finished']}",
        f"audio {summary['audio_seconds']:.1f} s ({summary['audio_seconds_this_run']:.1f} s this run)  wall "
        f"{summary['wall_seconds']:.1f} s  audio-seconds per second {summary['audio_seconds_per_second']:.2f}",
    ]
    if summary.get("dropped_chars_rows"):
        lines.append(
            f"{summary['dropped_chars_rows']} ok rows lost characters the model cannot say (see their dropped_chars "
            f"and spoken_text columns)"
        )
    workers = summary["workers"]
    if workers:
        width = max(len("worker"), *(len(name) for name in workers))
        head = f"{'worker':<{width}}  {'rows':>8}  {'audio s':>10}  {'occupancy':>9}"
        lines.append(f"{head}  {'in flight':>9}  {'read eff':>8}  {'KV held':>7}  {'preempted':>9}")
        for name, w in workers.items():
            line = f"{name:<{width}}  {w['rows']:>8}  {w['audio_seconds']:>10.1f}  {w['occupancy']:>9.2f}"
            e = w.get("engine")
            if e:  # the engine's latest accounting (see actors.tts_stage.ENGINE_ACCOUNTING)
                line += f"  {e['max_rows_in_flight']:>9}  {e['attention_read_efficiency']:>8.2f}"
                line += f"  {e['kv_held_share']:>7.2f}  {e['preemptions']:>9}"
            lines.append(line)
    return "\n".join(lines)


def _synth(args: argparse.Namespace) -> int:
    from jobs.synth import SynthOptions, run_synth

    if not args.input.is_file():
        print(f"raytts synth: input {args.input} is not a file (expected JSONL rows)", file=sys.stderr)
        return 2
    try:
        options = SynthOptions(
            model=args.model,
            input=args.input,
            output=args.output,
            speaker=args.speaker,
            sampling=SamplingSettings(**{name: getattr(args, name) for name in SamplingSettings.model_fields}),
            engine=EngineSettings(
                decoder=args.decoder,
                device=args.device,
                dtype=args.dtype,
                max_slots=args.max_batch_size,
                budget_mib=args.budget_mib,
                max_segment_tokens=args.max_segment_tokens,
                fsq=args.fsq,
                verify=args.verify,
                compile=args.compile,
                backend=args.backend,
                onnx=OnnxSettings(
                    path=_from_cwd(args.onnx_path) if args.onnx_path else None, quantize=args.onnx_quantize
                ),  # fmt: skip
            ),
            save_codes=args.save_codes,
            normalize=args.normalize,
            strict_text=args.strict_text,
            refine=RefineSettings(
                enabled=not args.no_refine,
                only=args.refine_only,
                prompt=args.refine_prompt,
                **{name: getattr(args, f"refine_{name}") for name, _ in SAMPLING_FLAGS},
            ),
            audio_format=args.audio_format,
        )
    except ValueError as err:
        print(f"raytts synth: {err}", file=sys.stderr)
        return 2
    try:
        status, report = run_synth(options)
    except ValueError as err:
        print(f"raytts synth: {err}", file=sys.stderr)
        return 2
    summary = report.to_dict()
    failures = summary.pop("failures")
    print(json.dumps(summary, indent=2))
    print_failures(failures, str(args.output / "_report.json"))
    return status


if __name__ == "__main__":
    sys.exit(main())
