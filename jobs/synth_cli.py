"""`raytts synth`'s flags, generated from the settings models (`jobs.flags`): `--<engine field>` for the engine,
`--<sampling field>` for the rows' sampling defaults, `--refine-<field>` for the refine-text stage; and the command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from actors.audio import AUDIO_FORMATS
from actors.reading import DATE_ORDERS, DEFAULT_DATE_ORDER
from actors.settings import (
    DATE_ORDER_HELP,
    NORMALIZE_HELP,
    REPLACEMENTS_HELP,
    STRICT_TEXT_HELP,
    EngineSettings,
    RefineSettings,
    SamplingSettings,
)
from actors.text import DEFAULT_NORMALIZE, NORMALIZE_MODES, Reading

from .common import from_cwd, listening_page, print_failures
from .flags import add_settings_flags, given

# The engine's max_new_tokens is synth's own: it reserves what its rows ask for (`jobs.synth.reserved_new_tokens`).
SYNTH_EXCLUDED_ENGINE = ("max_new_tokens",)


def add_synth_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="synthesise a JSONL file in-process (no Ray) to Parquet",
        description="Each input line is {'id': str, 'text': str} (no id: one derived from its content) with optional "
        "speaker, seed, sampling overrides, reference_audio (+ reference_text) or reference_codes. Writes "
        "OUTPUT/part-00000.parquet and OUTPUT/_report.json. Exit status 1 when any row failed.",
    )
    p.add_argument("--model", default=None, help="checkpoint folder, s3://... URI, hf://2Noise/ChatTTS[@rev], or tiny")
    p.add_argument("--input", required=True, type=Path, help="JSONL file of rows")
    p.add_argument("--output", required=True, type=Path, help="output folder (part-00000.parquet is overwritten)")
    p.add_argument("--speaker", default=None, help="default speaker: 'seed:N' or an upstream speaker string")
    p.add_argument("--save-codes", action="store_true", help="also store the [T, 4] audio codes")
    p.add_argument("--normalize", choices=NORMALIZE_MODES, default=DEFAULT_NORMALIZE, help=NORMALIZE_HELP)
    p.add_argument("--no-normalize", dest="normalize", action="store_const", const="off", help="--normalize off")
    p.add_argument("--strict-text", action="store_true", help=STRICT_TEXT_HELP)
    p.add_argument("--date-order", choices=DATE_ORDERS, default=DEFAULT_DATE_ORDER, help=DATE_ORDER_HELP)
    p.add_argument("--replacements", type=Path, default=None, metavar="JSON", help="a JSON file: " + REPLACEMENTS_HELP)
    p.add_argument("--audio-format", choices=tuple(AUDIO_FORMATS), default="flac")
    sampling = p.add_argument_group("sampling defaults of rows that do not carry their own")
    add_settings_flags(sampling, SamplingSettings, "sampling")
    refine = p.add_argument_group("refine-text stage (upstream's, on by default; rows may override it: `refine`)")
    add_settings_flags(refine, RefineSettings, "refine", prefix="refine-", names={"enabled": "--refine"})
    engine = p.add_argument_group("engine (the same settings as a job's or Serve config's `engine`)")
    add_settings_flags(engine, EngineSettings, "engine", exclude=SYNTH_EXCLUDED_ENGINE,
                       aliases={"max_slots": ["--max-batch-size"]})  # fmt: skip


def _replacements(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(
            f"--replacements {path}: expected a JSON object of text -> reading, could not read it: {err}"
        ) from None
    if not isinstance(table, dict):
        raise ValueError(
            f"--replacements {path}: expected a JSON object of text -> reading, got {type(table).__name__}"
        )
    return table


def synth(args: argparse.Namespace) -> int:
    from jobs.synth import SynthOptions, run_synth

    if not args.input.is_file():
        print(f"raytts synth: input {args.input} is not a file (expected JSONL rows)", file=sys.stderr)
        return 2
    engine = given(args, "engine")
    if engine.get("onnx", {}).get("path"):
        engine["onnx"]["path"] = from_cwd(engine["onnx"]["path"])
    try:
        options = SynthOptions(
            model=args.model,
            input=args.input,
            output=args.output,
            speaker=args.speaker,
            sampling=SamplingSettings(**given(args, "sampling")),
            engine=EngineSettings(**engine),
            save_codes=args.save_codes,
            normalize=args.normalize,
            strict_text=args.strict_text,
            reading=Reading.of(args.date_order, _replacements(args.replacements)),
            refine=RefineSettings(**given(args, "refine")),
            audio_format=args.audio_format,
        )
        status, report = run_synth(options)
    except (ValidationError, ValueError) as err:
        print(f"raytts synth: {err}", file=sys.stderr)
        return 2
    summary = report.to_dict()
    failures = summary.pop("failures")
    print(json.dumps(summary, indent=2))
    print_failures(failures, str(args.output / "_report.json"))
    listening_page(str(args.output))
    return status
