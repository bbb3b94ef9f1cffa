"""Coverage-guided fuzzers (atheris) for the decoders that face the outside world.

Each module is one target and runs on its own (atheris instruments the process, so one
target per process): `python -m tests.fuzz.<target> -atheris_runs=N`. Any libFuzzer flag
works (`-max_total_time=S`, a corpus directory, `-artifact_prefix=DIR/`).
`python -m tests.fuzz --seconds S` runs every target for S seconds and reports each one's
executions per second and findings.
"""

TARGETS = ("mqtt_json", "sparkplug_payload", "telemetry_json", "config_yaml")
