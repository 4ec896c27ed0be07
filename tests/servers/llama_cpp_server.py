"""`python -m tests.servers.llama_cpp_server ARGS`: llama-cpp-python's OpenAI-compatible server
(`python -m llama_cpp.server ARGS`) with llama.cpp's extra CPU buffer types switched off.

Why: with llama-cpp-python 0.3.36 the repacked weight layouts crash (SIGSEGV inside
`llama_decode`) on any prompt longer than one token on an Intel Xeon with AMX, the machine this
was written on (2026-11-23), while the same wheel works on AMD EPYC. The plain kernels run
everywhere; the server is a third-party peer for the tests and benchmarks, so we start it the way
that runs, and say so here.
"""

import runpy

import llama_cpp.llama_cpp as low_level

_default_params = low_level.llama_model_default_params


def _params_without_extra_buffers():
    params = _default_params()
    params.use_extra_bufts = False
    return params


low_level.llama_model_default_params = _params_without_extra_buffers

if __name__ == "__main__":
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
