"""A local OpenAI-compatible server that answers by script. A documented test double.

`ScriptedServer` is `FaultServer` (same endpoints, faults, counts and events) whose answers are
chosen by rules like the fake backend's `script`: the first rule whose `when` occurs in the
request's last user turn gives the answer ("{text}": the server's own hashed answer, "{prompt}":
the first line of the request's first message, for a prompt leak) and the finish reason
("length" plays a model cut off at its token limit). It also keeps every request body it
received (`bodies`), so a test can read the exact messages a backend sent.

    rules = capmill.testing.hostile.obeying_script(caption)   # a model that obeys injections
    with ScriptedServer(rules) as server:
        backend = {"type": "openai", "base_url": server.base_url, "model": server.model}
"""

from __future__ import annotations

from typing import Any

from capmill.testing.fault_server import Faults, FaultServer, answer_text, prompt_of, request_id


class ScriptedServer(FaultServer):
    def __init__(self, script: list[dict[str, Any]], faults: Faults | None = None, **kwargs: Any):
        super().__init__(faults, **kwargs)
        self.script = [dict(rule) for rule in script]
        self.bodies: list[dict[str, Any]] = []
        self._leaks: dict[str, str] = {}

    async def _chat(self, request: Any) -> Any:
        try:  # aiohttp keeps the body, so the parent handler reads it again
            body = await request.json()
            messages = body["messages"]
            first = messages[0]["content"] if messages else ""
            if isinstance(first, list):
                first = prompt_of([{"role": "user", "content": first}])
            with self._lock:
                self.bodies.append(body)
                self._leaks[request_id(messages)] = str(first).strip().split("\n", 1)[0][:200]
        except (ValueError, KeyError, TypeError, IndexError):
            pass  # the parent answers a malformed request with 400
        return await super()._chat(request)

    def _completion(self, prompt: str, n: int, images: int, refused: bool) -> dict[str, Any]:
        payload = super()._completion(prompt, n, images, refused)
        if refused:
            return payload
        rule = next((r for r in self.script if r["when"] in prompt), None)
        if rule is None:
            return payload
        with self._lock:
            leak = self._leaks.get(prompt, "")
        for i, choice in enumerate(payload["choices"]):
            text = rule["answer"].replace("{text}", answer_text(prompt, i, images)).replace("{prompt}", leak)
            choice["message"]["content"] = text
            choice["finish_reason"] = rule.get("finish_reason") or "stop"
        return payload
