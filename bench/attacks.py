"""The operator's memory under the floods of issue 21, by non-admin identities (figures only:
the bounds themselves are tests, tests/integration/test_operator_memory.py and friends).

    python bench/attacks.py                      # every flood, this tree's operator
    python bench/attacks.py --tree DIR           # the same floods against another checkout's operator

Starts the local control plane and a lone operator, then, one after another:

  token-garbage  THREADS clients at once sending garbage bearer assertions to POST /oauth2/token
                 (bodies near the 16 KiB limit), as in item 3
  leak-garbage   THREADS clients at once sending garbage bearer tokens with 1 MiB report
                 bodies to POST /v1/trace
  leak-batches   a listed reporter sending 1,000-item batches of strings that are nobody's,
                 CONCURRENT at once (guessing, item 4)
  request-ids    a tenant writing `agentcred renew` requests with 200 KB ids (item 7)

and prints the operator's resident memory (VmRSS) and its peak (VmHWM) after each, from /proc.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, config

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(BENCH))

import leaks  # noqa: E402
from agentcred.api import labels, model  # noqa: E402
from agentcred.devcluster.binaries import ensure_binaries  # noqa: E402
from agentcred.devcluster.controlplane import ControlPlane  # noqa: E402
from agentcred.devcluster.install import install_agentcred  # noqa: E402
from harness import log_tail  # noqa: E402
from leaks import REPORTER, Operator  # noqa: E402

NAMESPACE = "bench-attacks"


def memory(pid: int) -> dict[str, float]:
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024  # MiB
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=REPO, help="the checkout whose operator/ runs")
    parser.add_argument("--threads", type=int, default=256, help="clients at once in the garbage floods")
    parser.add_argument("--requests", type=int, default=2000, help="requests per garbage flood")
    parser.add_argument("--concurrent", type=int, default=16, help="batches at once in the guessing flood")
    parser.add_argument("--batches", type=int, default=64, help="1,000-item batches in the guessing flood")
    parser.add_argument("--ids", type=int, default=300, help="requests with 200 KB ids")
    args = parser.parse_args()

    ensure_binaries()
    with tempfile.TemporaryDirectory(prefix="agentcred-bench-attacks-") as scratch, ControlPlane() as plane:
        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        install_agentcred(api)
        leaks.REPO = args.tree  # the Operator runs `<tree>/operator`
        operator = Operator(plane, Path(scratch))
        if "--cluster-leak-reporters" not in (args.tree / "operator" / "agentcred" / "cli.py").read_text():
            os.environ["AGENTCRED_LEAK_REPORTERS"] = "/".join(REPORTER)  # where every listed reporter acted anywhere
            leaks.REPORTER_FLAG = "--leak-reporters"
        try:
            operator.start()
            assert operator.process is not None
            figures = floods(api, operator, args)
        except BaseException:
            print(log_tail(Path(scratch) / "operator.log", 40), file=sys.stderr)
            raise
        finally:
            operator.stop()
    print(f"\n== operator memory (MiB), {args.tree} ==")
    print(f"{'after':20} {'VmRSS':>8} {'VmHWM':>8} {'seconds':>8}")
    for name, figure in figures.items():
        print(f"{name:20} {figure['VmRSS']:>8.0f} {figure['VmHWM']:>8.0f} {figure.get('seconds', 0):>8.1f}")
    return 0


def floods(api: client.ApiClient, operator: Operator, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    assert operator.process is not None
    pid = operator.process.pid
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # loopback, our own operator
    figures: dict[str, dict[str, float]] = {"start": memory(pid)}

    def post(path: str, body: bytes, headers: dict[str, str]) -> int:
        request = urllib.request.Request(operator.url + path, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, context=context, timeout=120) as response:
                response.read()
                return response.status
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return 0

    def flood(name: str, send: Any, count: int, threads: int) -> None:
        began = time.monotonic()
        with ThreadPoolExecutor(threads) as pool:
            statuses = list(pool.map(send, range(count)))
        figures[name] = {**memory(pid), "seconds": time.monotonic() - began}
        print(name, {status: statuses.count(status) for status in set(statuses)}, figures[name], flush=True)

    form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "scope": "x" * 15_000}
    flood(
        "token-garbage",
        lambda i: post(
            "/oauth2/token",
            urllib.parse.urlencode({**form, "assertion": f"garbage-{i}"}).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        ),
        args.requests,
        args.threads,
    )
    report = json.dumps([{"token": "x" * 1000}] * 1000).encode()  # ~1 MiB
    flood(
        "leak-garbage",
        lambda i: post(
            "/v1/trace", report, {"Content-Type": "application/json", "Authorization": f"Bearer garbage-{i}"}
        ),
        args.requests // 4,
        args.threads,
    )
    time.sleep(15)  # the loopback address's budget of refused tokens refills (the floods above used it up)
    core = client.CoreV1Api(api)
    core.create_namespaced_service_account(REPORTER[0], {"metadata": {"name": REPORTER[1]}})
    token = core.create_namespaced_service_account_token(
        REPORTER[1], REPORTER[0], {"spec": {"audiences": [labels.SERVICE_ACCOUNT_AUDIENCE], "expirationSeconds": 3600}}
    ).status.token
    flood(
        "leak-batches",
        lambda i: post(
            "/v1/trace",
            json.dumps([{"token": f"guess-{i}-{j:04d}-" + "x" * 900} for j in range(1000)]).encode(),
            {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        ),
        args.batches,
        args.concurrent,
    )
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(
        model.GROUP,
        model.VERSION,
        NAMESPACE,
        model.PLURAL,
        {
            "apiVersion": model.API_VERSION,
            "kind": model.KIND,
            "metadata": {"name": "llm"},
            "spec": {
                "owner": "bench@example.com",
                "category": "model",
                "subjects": {"serviceAccounts": ["agent"]},
                "source": {"jwt": {"audiences": ["bench"]}},
                "projection": {"mountPath": "/var/run/agentcred/llm"},
            },
        },
    )

    def renew(i: int) -> int:
        request = {"id": f"{i:04d}" + uuid.uuid4().hex * 6400}  # ~200 KB
        custom.patch_namespaced_custom_object(
            model.GROUP,
            model.VERSION,
            NAMESPACE,
            model.PLURAL,
            "llm",
            {"metadata": {"annotations": {labels.RENEW_ANNOTATION: json.dumps(request)}}},
        )
        return 200

    flood("request-ids", renew, args.ids, 4)
    time.sleep(10)  # the operator catches up with the events
    figures["settled"] = memory(pid)
    return figures


if __name__ == "__main__":
    sys.exit(main())
