"""`python -m tests.support.servers.llama_cpp_server ARGS`: llama-cpp-python's OpenAI-compatible server
(`python -m llama_cpp.server ARGS`, its own flags) as the package starts it for `rlaif serve-gguf`:
with llama.cpp's extra CPU buffer types off, which crash llama-cpp-python 0.3.36 on Intel Xeons with
AMX (rlaif/gguf_server.py says why). The tests and benchmarks that talk to a third-party server pass
llama_cpp.server's flags, hence this entry point; the code is the package's."""

import sys

from rlaif.gguf_server import llama_cpp_server_main

if __name__ == "__main__":
    sys.exit(llama_cpp_server_main(sys.argv[1:]))
