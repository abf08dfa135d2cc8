"""Locust entry point for Triton LLM load tests.

`tritongen loadtest` runs this file; it also works on its own, e.g.
``locust -f loadtest/locustfile.py --headless -H http://127.0.0.1:8000 --protocol http-stream -u 8 -t 30s``
(the LLM options are the spec's loadtest fields as flags, listed in ``_SPEC_ARGS`` of tritonllm.py, plus
``--records`` and ``--duration``; docs/loadtest.md). To script other behaviour, subclass ``TritonLLMUser``
in your own locustfile next to this one.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, wherever Locust runs from

from tritonllm import TritonLLMUser  # noqa: E402


class LLMUser(TritonLLMUser):
    """Closed loop by default; open loop (one dispatcher per process) with --request-rate."""
