"""`attacks` (run only when asked: `python -m bench --only attacks`): the operator's memory under
the floods of issue 21, by non-admin identities (figures only: the bounds themselves are tests,
tests/integration/test_operator_memory.py and friends). A lone operator on the shared control
plane, then, one after another:

  token-garbage  256 clients at once sending garbage bearer assertions to POST /oauth2/token
                 (bodies near the 16 KiB limit), as in item 3
  leak-garbage   256 clients at once sending garbage bearer tokens with 1 MiB report
                 bodies to POST /v1/trace
  leak-batches   a listed reporter sending 1,000-item batches of strings that are nobody's,
                 16 at once (guessing, item 4)
  request-ids    a tenant writing `agentcred renew` requests with 200 KB ids (item 7)

and the operator's resident memory (VmRSS) and its peak (VmHWM) after each, from /proc.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agentcred.api import labels, model

from ..context import Context, clean, measure_and_clean
from ..under_test import UnderTest
from .leaks import REPORTER

NAMESPACE = "bench-attacks"
THREADS, REQUESTS, CONCURRENT, BATCHES, IDS = 256, 2000, 16, 64, 300


def run(ctx: Context) -> dict[str, Any]:
    operator = ctx.operator
    operator.start("--cluster-leak-reporters", "/".join(REPORTER))

    def stop_after_cleaning() -> float:
        try:
            return clean(ctx.lean, NAMESPACE, 10)
        finally:
            operator.stop()

    return measure_and_clean(lambda: floods(operator), stop_after_cleaning)


def memory(operator: UnderTest) -> dict[str, float]:
    found = operator.usage()
    return {"rss_mb": found["rss_mb"], "peak_rss_mb": found["peak_rss_mb"]}


def floods(operator: UnderTest) -> dict[str, Any]:
    lean, url = operator.lean, operator.running.api_url
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # loopback, our own operator
    figures: dict[str, Any] = {"start": memory(operator)}

    def post(path: str, body: bytes, headers: dict[str, str]) -> int:
        request = urllib.request.Request(url + path, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, context=context, timeout=120) as response:
                response.read()
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)
        except OSError:
            return 0

    def flood(name: str, send: Callable[[int], int], count: int, threads: int) -> None:
        began = time.monotonic()
        with ThreadPoolExecutor(threads) as pool:
            statuses = list(pool.map(send, range(count)))
        answers = {str(status): statuses.count(status) for status in set(statuses)}
        figures[name] = {**memory(operator), "seconds": time.monotonic() - began, "answers": answers}
        print(f"  {name}: {figures[name]}", flush=True)

    form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "scope": "x" * 15_000}
    urlencoded = {"Content-Type": "application/x-www-form-urlencoded"}
    flood(
        "token-garbage",
        lambda i: post(
            "/oauth2/token", urllib.parse.urlencode({**form, "assertion": f"garbage-{i}"}).encode(), urlencoded
        ),
        REQUESTS,
        THREADS,
    )
    report = json.dumps([{"token": "x" * 1000}] * 1000).encode()  # ~1 MiB
    flood(
        "leak-garbage",
        lambda i: post(
            "/v1/trace", report, {"Content-Type": "application/json", "Authorization": f"Bearer garbage-{i}"}
        ),
        REQUESTS // 4,
        THREADS,
    )
    time.sleep(15)  # the loopback address's budget of refused tokens refills (the floods above used it up)
    lean.call("POST", f"/api/v1/namespaces/{REPORTER[0]}/serviceaccounts", {"metadata": {"name": REPORTER[1]}})
    token = lean.json(
        "POST",
        f"/api/v1/namespaces/{REPORTER[0]}/serviceaccounts/{REPORTER[1]}/token",
        {"spec": {"audiences": [labels.SERVICE_ACCOUNT_AUDIENCE], "expirationSeconds": 3600}},
    )["status"]["token"]
    reporter = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}

    def guesses(i: int) -> bytes:
        return json.dumps([{"token": f"guess-{i}-{j:04d}-" + "x" * 900} for j in range(1000)]).encode()

    flood("leak-batches", lambda i: post("/v1/trace", guesses(i), reporter), BATCHES, CONCURRENT)
    operator.namespace(NAMESPACE)
    credential = f"/apis/{model.GROUP}/{model.VERSION}/namespaces/{NAMESPACE}/{model.PLURAL}/cred-0"

    def renew(i: int) -> int:
        request = {"id": f"{i:04d}" + uuid.uuid4().hex * 6400}  # ~200 KB
        patch = {"metadata": {"annotations": {labels.RENEW_ANNOTATION: json.dumps(request)}}}
        lean.call("PATCH", credential, patch, content_type="application/merge-patch+json")
        return 200

    flood("request-ids", renew, IDS, 4)
    time.sleep(10)  # the operator catches up with the events
    figures["settled"] = memory(operator)
    return figures
