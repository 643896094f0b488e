"""`ScriptedModelServer`: the scripted model on real HTTP (127.0.0.1), async or in a thread of its own."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence

from qwq_agent.testing._http import HttpRequest, HttpResponder, serve_connection
from qwq_agent.testing.scripted.openai_api import OpenAIRoutes
from qwq_agent.testing.scripted.script import ScriptedRequest, Turn, TurnSource
from qwq_agent.testing.scripted.sglang_api import SGLangRoutes


class ScriptedModelServer(SGLangRoutes, OpenAIRoutes):
    """Serves scripted turns over SGLang's native API and the OpenAI chat API on 127.0.0.1.

    Args:
        turns: the output of each successive request, or one callable answering every request.
        model: the model name reported by `/v1/models` and `/server_info`.
        max_total_num_tokens: the KV capacity reported by `/server_info`.
        incremental: stream native `/generate` output as disjoint pieces (SGLang's
            `--incremental-streaming-output`) instead of the default cumulative text.
        api_key: when set, `/v1/*` requires `Authorization: Bearer <api_key>`.
        when_exhausted: "error" answers 500 once the turns run out; "repeat" starts them over.
        ready: whether `/health` answers 200 from the start (else 503 until `set_ready()`).
        abort_delay: seconds `/abort_request` waits before it acts and answers (a slow server); the
            request is recorded in `abort_requests` as soon as it arrives.
        check_context: refuse a request whose prompt, or prompt plus `max_new_tokens`, does not fit
            `context_length`, in SGLang's words (`refused` lists them); off: every request is served.
    """

    def __init__(
        self,
        turns: Sequence[TurnSource] | Callable[[ScriptedRequest], str | Turn] = (),
        *,
        model: str = "Qwen/QwQ-32B",
        max_total_num_tokens: int = 18391,
        context_length: int = 16384,
        incremental: bool = False,
        api_key: str | None = None,
        when_exhausted: str = "error",
        ready: bool = True,
        use_project_tokenizer: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        abort_delay: float = 0.0,
        check_context: bool = False,
    ) -> None:
        super().__init__(turns, when_exhausted=when_exhausted, use_project_tokenizer=use_project_tokenizer)
        self.model = model
        self.max_total_num_tokens = max_total_num_tokens
        self.context_length = context_length
        self.check_context = check_context
        self.incremental = incremental
        self.ready = ready
        self.abort_delay = abort_delay
        self.api_key = api_key
        self.host = host
        self.port = port
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # ----- lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, e.g. `http://127.0.0.1:41234`."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind and start serving on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._server = await asyncio.start_server(
            lambda r, w: serve_connection(r, w, self._dispatch), self.host, self.port
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop accepting and close the listening socket; streams in flight are released."""
        if self._stopping is not None:
            self._stopping.set()
        for event in self._aborts.values():
            event.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> ScriptedModelServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __enter__(self) -> ScriptedModelServer:
        started = threading.Event()
        loop = asyncio.new_event_loop()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # report bind errors to the caller's thread
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="scripted-model-server", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            raise failure[0]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._thread = None

    def set_ready(self, ready: bool = True) -> None:
        """Make `/health` answer 200 (or 503 again)."""
        self.ready = ready

    # ----- dispatch --------------------------------------------------------------------------------

    async def _dispatch(self, req: HttpRequest, out: HttpResponder) -> None:
        routes = {
            ("GET", "/health"): self._health,
            ("GET", "/health_generate"): self._health,
            ("GET", "/server_info"): self._server_info,
            ("GET", "/get_server_info"): self._server_info,
            ("GET", "/get_model_info"): self._model_info,
            ("GET", "/metrics"): self._metrics,
            ("POST", "/generate"): self._generate,
            ("POST", "/abort_request"): self._abort,
            ("POST", "/flush_cache"): self._flush_cache,
            ("GET", "/v1/models"): self._models,
            ("POST", "/v1/chat/completions"): self._chat,
        }
        route = routes.get((req.method, req.path))
        if route is None:
            await out.send_json(404, {"error": {"message": f"no route {req.method} {req.path}"}})
            return
        if req.path.startswith("/v1/") and self.api_key is not None:
            if req.headers.get("authorization") != f"Bearer {self.api_key}":
                await out.send_json(401, {"error": {"message": "invalid api key", "type": "auth_error"}})
                return
        try:
            await route(req, out)
        except (ConnectionError, OSError):
            pass  # the client went away mid-response
        except Exception as exc:  # a bug in a scripted callable: answer 500 and keep it for the test
            self.errors.append(f"{type(exc).__name__}: {exc}")
            if not out.started:
                await out.send_json(500, {"error": {"message": f"scripted server: {exc}"}})
