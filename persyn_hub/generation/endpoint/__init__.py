"""Generation through inference endpoints (TGI, vLLM, llama.cpp or any OpenAI-compatible server).

`generate` is the entry point (`generate_with_endpoints`); `client` (servers and slots), `records` (rows
in, records out), `guard` (refusals and stops per process), `checks` (settings, reachability, fixes)
and `generator` (the requests and the preflight probe) are its parts.
"""
