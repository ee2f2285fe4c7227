"""A model API stand-in (OpenAI-shaped chat completions) that accepts one API key.

It answers `POST /v1/chat/completions` (the model in the body) and
`POST /openai/deployments/<deployment>/chat/completions` (the model in the path) when the
request carries its key in `X-Api-Key`, and says in each answer whether an `Authorization`
header reached it (the agent's own token must not). It logs neither.

    python model_api.py --port 8000 --key-file /etc/model-api/api-key
    python model_api.py --port 8000 --any-key     # no key checked: a benchmark's floor
"""

from __future__ import annotations

import argparse
import hmac
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def handler(key: bytes | None) -> type[BaseHTTPRequestHandler]:
    class ModelApi(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            given = (self.headers.get("X-Api-Key") or "").encode()
            if key is not None and not hmac.compare_digest(given, key):
                return self._answer(401, {"error": "invalid api key"})
            parts = self.path.split("/")
            model = parts[3] if self.path.startswith("/openai/deployments/") else body.get("model")
            self._answer(
                200,
                {
                    "object": "chat.completion",
                    "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello from " + str(model)}}],
                    "sawAuthorization": "Authorization" in self.headers,
                },
            )

        def _answer(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass  # request lines only would do; nothing at all is simplest to trust

    return ModelApi


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--key-file", help="the one key accepted in X-Api-Key")
    parser.add_argument("--any-key", action="store_true", help="accept every request (a benchmark's floor)")
    args = parser.parse_args()
    if (args.key_file is None) == (not args.any_key):
        parser.error("give --key-file, or --any-key")
    key = Path(args.key_file).read_bytes().strip() if args.key_file else None
    Server((args.host, args.port), handler(key)).serve_forever()


class Server(ThreadingHTTPServer):
    request_queue_size = 256  # many callers at once: queued, not refused
    daemon_threads = True


if __name__ == "__main__":
    main()
