"""`make contract`: Schemathesis CLI against the three live services of a freshly started stack.

Auth on, each service tested with a token holding the scopes its spec needs, every check,
positive and negative data, and the stateful phase. Exits non-zero on any failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.stack import start_stack  # noqa: E402

TARGETS = (  # spec, attribute of the running stack, requester whose token the run uses
    ("openapi/bucket.yaml", "bucket_url", "bhiv_core"),
    ("openapi/karma.yaml", "karma_url", "bhiv_core"),
    ("openapi/executor.yaml", "executor_url", "bhiv_core"),
)


def main() -> int:
    # measures the services, not the per-requester limiter (src/bhiv/requesters.yaml); the stack inherits it
    os.environ["BHIV_RATE_LIMITS"] = "off"
    max_examples = os.environ.get("BHIV_CONTRACT_MAX_EXAMPLES", "25")
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        stack = start_stack(Path(tmp) / "state")
        try:
            for spec, attr, requester in TARGETS:
                url = getattr(stack, attr)
                print(f"\n=== {spec} against {url} ===", flush=True)
                command = [
                    str(ROOT / ".venv" / "bin" / "schemathesis"),
                    "run",
                    str(ROOT / spec),
                    "--url",
                    url,
                    "-H",
                    f"Authorization: Bearer {stack.tokens[requester]}",
                    "--checks",
                    "all",
                    "--mode",
                    "all",
                    "--phases",
                    "examples,coverage,fuzzing,stateful",
                    "--max-examples",
                    max_examples,
                    "--seed",
                    "1",
                    "--request-timeout",
                    "30",
                ]
                env = {**os.environ, "SCHEMATHESIS_HOOKS": "scripts.contract_hooks", "PYTHONPATH": str(ROOT)}
                result = subprocess.run(command, cwd=ROOT, check=False, env=env)
                if result.returncode != 0:
                    failed.append(spec)
        finally:
            stack.stop()
    if failed:
        print(f"\ncontract runs failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print("\ncontract runs passed against the live stack")
    return 0


if __name__ == "__main__":
    sys.exit(main())
