"""The offline job (`raytts run`) as a Ray Data graph: config, finding and parsing shards, exactly-once bookkeeping,
the CPU prepare and store stages around the engine actors, output parts and the report. Torch-free at import (its
tasks never load the model); it uses `actors/` for everything model-side and is used only by `jobs/`."""
