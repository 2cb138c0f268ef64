"""The replica library and its two Ray hosts: the model (`model/`), checkpoints (`checkpoint/`), the engine
(`engine/`), text, voices, requests, settings, one replica (`replica.Synthesizer`) and its driver, the Ray Data
stage (`tts_stage`) and the Serve app (`serving/`). Never imports `pipeline/` or `jobs/` (`make lint` checks)."""
