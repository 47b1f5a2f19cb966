"""The embedded assistant: one chat-model node over LangGraph's messages state."""

from __future__ import annotations

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableLambda
from langgraph.graph import END, START, MessagesState, StateGraph

from agent.models import EchoChatModel, chat_model_from_env


def build_graph(chat_model: BaseChatModel):
    def respond(state: MessagesState) -> dict:
        # A sync node: LangGraph runs it in a worker thread, so a blocking model (llama.cpp)
        # never stalls the server's event loop, and its streaming callbacks still reach the
        # `messages` stream mode.
        return {"messages": [chat_model.invoke(state["messages"])]}

    async def respond_async(state: MessagesState) -> dict:
        # The echo model streams natively on the event loop: no worker thread per run, so the
        # benchmark's hundreds of concurrent slow streams are not capped by the thread pool.
        return {"messages": [await chat_model.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    if isinstance(chat_model, EchoChatModel):
        builder.add_node("respond", RunnableLambda(respond, afunc=respond_async, name="respond"))
    else:
        builder.add_node("respond", respond)
    builder.add_edge(START, "respond")
    builder.add_edge("respond", END)
    return builder.compile()


graph = build_graph(chat_model_from_env())
