"""The node plugin's link to the operator: HTTPS, the operator's CA, the plugin's own token.

Where to reach the operator and how to trust and authenticate to it are files, read again on
every call (they rotate): `<folder>/url` (or the `--operator-url` given), `<folder>/ca.crt`
(the operator's CA, from its `<instance>-ca-bundle` ConfigMap) and `<folder>/token` (the
plugin's ServiceAccount token, audience `agentcred`, bound to its pod or node). In the chart
the kubelet projects all three into the plugin's pod; `agentcred dev up` writes them.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp


class OperatorUnavailable(Exception):
    """The operator could not be asked, or asks to be asked again later."""


class OperatorRefused(Exception):
    """The operator refused (status 400, 401, 403); `reason` and the message say why."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason = status, reason


@dataclass
class OperatorLink:
    folder: Path
    url: str = ""

    def _endpoint(self) -> tuple[str, ssl.SSLContext, str]:
        try:
            url_file = self.folder / "url"
            url = url_file.read_text().strip() if url_file.exists() else self.url
            context = ssl.create_default_context(cafile=str(self.folder / "ca.crt"))
            token = (self.folder / "token").read_text().strip()
        except (OSError, ssl.SSLError) as error:
            raise OperatorUnavailable(
                f"the operator's address, CA or the plugin's token is not there yet: {error}"
            ) from None
        if not url or not token:
            raise OperatorUnavailable(f"no operator URL or token in {self.folder}")
        return url.rstrip("/"), context, token

    async def post(self, path: str, body: dict[str, Any], seconds: float) -> dict[str, Any]:
        url, context, token = self._endpoint()
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=seconds)) as session,
                session.post(
                    f"{url}{path}",
                    data=json.dumps(body),
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                    ssl=context,
                    allow_redirects=False,
                ) as answer,
            ):
                text = await answer.text()
                status = answer.status
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise OperatorUnavailable(
                f"could not reach the operator at {url}: {error or type(error).__name__}"
            ) from None
        try:
            data = json.loads(text)
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        if status == 200:
            return data
        reason, message = str(data.get("reason") or status), str(data.get("message") or text[:200])
        if status in (400, 401, 403):
            raise OperatorRefused(status, reason, message)
        raise OperatorUnavailable(f"the operator answered {status}: {message}")
