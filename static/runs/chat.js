// The chat page over websocket protocol v1 (docs/protocol.md). Without this script the page
// still works: the form posts to the server, which waits for the reply and redirects back.

const chat = document.getElementById("chat");
const transcript = document.getElementById("transcript");
const form = document.getElementById("composer");
const textBox = document.getElementById("text");
const sendButton = document.getElementById("send");
const stopButton = document.getElementById("stop");
const memoryBox = document.getElementById("memory");
const memoryHelp = document.getElementById("memory-help");
const forgetButton = document.getElementById("forget");
const banner = document.getElementById("banner");
const bannerText = document.getElementById("banner-text");
const retryButton = document.getElementById("retry");
const liveStatus = document.getElementById("live-status");
const conversationField = document.getElementById("conversation-field");
const conversationList = document.getElementById("conversation-list");
const title = document.getElementById("chat-title");

const MEMORY_ON = "On: the assistant remembers this conversation.";
const MEMORY_OFF = "Off: each message is answered on its own, nothing is remembered.";
const RETRYABLE = new Set(["backend_unavailable", "backend_error", "backend_timeout", "busy", "rate_limited", "connection"]);

const state = {
  conversation: chat.dataset.conversation || null,
  activeRun: chat.dataset.activeRun || null,
  lastSeq: 0,
  pending: null, // {client_id, text, memory}: the send awaiting run.started, kept for Retry
  lastFailed: null, // the last send that failed, for Retry
  socket: null,
  retryDelay: 500,
};

// The websocket, reconnecting by itself.

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}${chat.dataset.wsPath}`);
  state.socket = socket;
  socket.addEventListener("open", () => {
    state.retryDelay = 500;
    chat.classList.remove("offline");
    if (banner.dataset.code === "connection") hideBanner();
    if (state.conversation) send({ type: "conversation.watch", conversation: state.conversation });
  });
  socket.addEventListener("message", (event) => {
    let frame;
    try { frame = JSON.parse(event.data); } catch { return; }
    const handler = handlers[frame.type];
    if (handler) handler(frame);
  });
  socket.addEventListener("close", () => {
    chat.classList.add("offline");
    if (state.pending) {
      state.lastFailed = state.pending;
      state.pending = null;
      setBusy(false);
    }
    if (state.activeRun || state.lastFailed) showBanner("Connection lost. Reconnecting…", "connection");
    setTimeout(connect, state.retryDelay);
    state.retryDelay = Math.min(state.retryDelay * 2, 8000);
  });
}

function send(frame) {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) {
    state.socket.send(JSON.stringify(frame));
    return true;
  }
  return false;
}

// Rendering.

function timeLabel(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function messageElement(message) {
  const item = document.createElement("li");
  item.className = `message ${message.role}`;
  item.dataset.id = message.id;
  const meta = document.createElement("div");
  meta.className = "meta";
  const role = document.createElement("span");
  role.className = "role";
  role.textContent = message.role === "user" ? "You" : "Assistant";
  const badge = document.createElement("span");
  badge.className = `badge ${message.remembered ? "remembered" : "stateless"}`;
  badge.textContent = message.remembered ? "remembered" : "not remembered";
  const time = document.createElement("time");
  time.dateTime = message.created_at;
  time.textContent = timeLabel(message.created_at);
  meta.append(role, badge, time);
  if (message.status === "cancelled" || message.status === "failed") {
    item.classList.add(message.status);
    const status = document.createElement("span");
    status.className = "status";
    status.textContent = message.status === "cancelled" ? "stopped" : `failed${message.error ? `: ${message.error.message}` : ""}`;
    meta.append(status);
  }
  item.append(meta);
  if (message.notice) {
    const notice = document.createElement("p");
    notice.className = "notice";
    notice.textContent = message.notice;
    item.append(notice);
  }
  const body = document.createElement("div");
  body.className = "body";
  // `html` is sanitized on the server (markdown-it-py + nh3); everything else is set as text.
  body.innerHTML = message.html;
  item.append(body);
  if (message.role === "assistant" && message.text) item.append(copyButton(message.text));
  return item;
}

function copyButton(text) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "copy link";
  button.textContent = "Copy";
  button.setAttribute("aria-label", "Copy reply");
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch {
      button.textContent = "Copy failed";
    }
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  });
  return button;
}

function upsertMessage(message) {
  document.getElementById("empty-state")?.remove();
  const existing = transcript.querySelector(`li[data-id="${CSS.escape(message.id)}"]`);
  const element = messageElement(message);
  if (existing) existing.replaceWith(element);
  else transcript.append(element);
  return element;
}

function streamingElement(runId) {
  let item = transcript.querySelector(`li[data-run="${CSS.escape(runId)}"]`);
  if (!item) {
    document.getElementById("empty-state")?.remove();
    item = document.createElement("li");
    item.className = "message assistant streaming";
    item.dataset.run = runId;
    item.innerHTML = '<div class="meta"><span class="role">Assistant</span><span class="typing" aria-label="typing"><i></i><i></i><i></i></span></div><div class="body"><p class="stream-text"></p></div>';
    transcript.append(item);
  }
  return item;
}

function scrollToEnd() {
  transcript.lastElementChild?.scrollIntoView({ block: "end" });
}

function setBusy(streaming) {
  stopButton.hidden = !streaming;
  sendButton.disabled = streaming || state.pending !== null;
}

function showBanner(text, code) {
  bannerText.textContent = text;
  banner.dataset.code = code || "";
  banner.hidden = false;
  retryButton.hidden = !(RETRYABLE.has(code) && state.lastFailed);
}

function hideBanner() {
  banner.hidden = true;
  banner.dataset.code = "";
}

function setMemory(enabled) {
  memoryBox.checked = enabled;
  memoryHelp.textContent = enabled ? MEMORY_ON : MEMORY_OFF;
}

function setConversation(conversation) {
  state.conversation = conversation.id;
  chat.dataset.conversation = conversation.id;
  conversationField.value = conversation.id;
  title.textContent = conversation.title || "Conversation";
  document.title = `${conversation.title || "Conversation"} · Chat`;
  setMemory(conversation.memory);
  forgetButton.disabled = !conversation.has_thread;
  const path = `/c/${conversation.id}/`;
  if (location.pathname !== path) history.replaceState(null, "", path);
  let link = conversationList.querySelector(`a[data-conversation="${CSS.escape(conversation.id)}"]`);
  if (!link) {
    conversationList.querySelector(".empty-list")?.remove();
    const item = document.createElement("li");
    link = document.createElement("a");
    link.href = path;
    link.dataset.conversation = conversation.id;
    item.append(link);
    conversationList.prepend(item);
  }
  link.textContent = conversation.title || "Untitled";
  conversationList.querySelectorAll("a[aria-current]").forEach((a) => a.removeAttribute("aria-current"));
  link.setAttribute("aria-current", "page");
}

// Frames from the server.

const handlers = {
  "conversation.snapshot"(frame) {
    if (state.conversation && frame.conversation.id !== state.conversation) return;
    setConversation(frame.conversation);
    transcript.replaceChildren();
    frame.messages.forEach(upsertMessage);
    state.activeRun = frame.active_run ? frame.active_run.run : null;
    if (frame.active_run) {
      const item = streamingElement(frame.active_run.run);
      item.querySelector(".stream-text").textContent = frame.active_run.text;
      state.lastSeq = frame.active_run.seq;
    }
    setBusy(Boolean(state.activeRun));
    scrollToEnd();
  },
  "run.started"(frame) {
    const mine = state.pending && frame.client_id === state.pending.client_id;
    if (!mine && frame.conversation !== state.conversation) return;
    if (mine) {
      state.pending = null;
      textBox.value = "";
      if (frame.conversation !== state.conversation) {
        setConversation({ id: frame.conversation, title: frame.user_message.text.slice(0, 60), memory: frame.mode === "thread", has_thread: false });
      }
    }
    if (frame.mode === "thread") forgetButton.disabled = false;
    upsertMessage(frame.user_message);
    state.activeRun = frame.run;
    state.lastSeq = 0;
    streamingElement(frame.run);
    liveStatus.textContent = "The assistant is answering…";
    setBusy(true);
    scrollToEnd();
  },
  "run.delta"(frame) {
    if (frame.run !== state.activeRun || frame.seq <= state.lastSeq) return;
    state.lastSeq = frame.seq;
    streamingElement(frame.run).querySelector(".stream-text").textContent += frame.text;
    scrollToEnd();
  },
  "run.completed"(frame) { finishRun(frame, "The assistant answered."); },
  "run.cancelled"(frame) { finishRun(frame, "Stopped."); },
  "run.failed"(frame) {
    finishRun(frame, "The reply failed.");
    if (frame.message && frame.message.status === "failed" || frame.error) {
      showBanner(frame.error ? frame.error.message : "The reply failed.", frame.error ? frame.error.code : "backend_error");
    }
  },
  error(frame) {
    if (state.pending && frame.client_id === state.pending.client_id) {
      state.lastFailed = state.pending;
      state.pending = null;
    }
    setBusy(Boolean(state.activeRun));
    showBanner(frame.message, frame.code);
  },
};

function finishRun(frame, announcement) {
  const placeholder = transcript.querySelector(`li[data-run="${CSS.escape(frame.run)}"]`);
  if (frame.message) {
    const element = messageElement(frame.message);
    if (placeholder) placeholder.replaceWith(element);
    else if (!transcript.querySelector(`li[data-id="${CSS.escape(frame.message.id)}"]`)) {
      if (frame.run !== state.activeRun) return;
      transcript.append(element);
    }
  } else {
    placeholder?.remove();
  }
  if (frame.run === state.activeRun) {
    state.activeRun = null;
    liveStatus.textContent = announcement;
    setBusy(false);
    textBox.focus();
  }
  scrollToEnd();
}

// What the user does.

function clientId() {
  return (crypto.randomUUID ? crypto.randomUUID() : String(Math.random())).slice(0, 36);
}

function submitMessage(text, memory) {
  const pending = { client_id: clientId(), text, memory };
  const frame = { type: "chat.send", text, memory, conversation: state.conversation, client_id: pending.client_id };
  if (!send(frame)) {
    state.lastFailed = pending;
    showBanner("Not connected. Reconnecting… your message was not sent.", "connection");
    return;
  }
  state.pending = pending;
  hideBanner();
  setBusy(false);
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = textBox.value.trim();
  if (!text) {
    showBanner("Type a message first.", "empty_text");
    return;
  }
  const limit = Number(chat.dataset.maxChars);
  if (text.length > limit) {
    showBanner(`A message can be at most ${limit.toLocaleString()} characters; this one has ${text.length.toLocaleString()}.`, "text_too_long");
    return;
  }
  submitMessage(text, memoryBox.checked);
});

textBox.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    if (!sendButton.disabled) form.requestSubmit();
  }
});

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && state.activeRun) {
    event.preventDefault();
    stopRun();
  }
});

function stopRun() {
  if (state.activeRun) send({ type: "chat.cancel", run: state.activeRun });
}

stopButton.addEventListener("click", stopRun);

memoryBox.addEventListener("change", () => {
  setMemory(memoryBox.checked);
  if (state.conversation) send({ type: "conversation.memory", conversation: state.conversation, enabled: memoryBox.checked });
});

forgetButton.addEventListener("click", () => {
  if (!state.conversation) return;
  const sure = window.confirm("Forget this conversation? The assistant loses its memory of it; the transcript stays here.");
  if (sure) send({ type: "conversation.forget", conversation: state.conversation });
});

retryButton.addEventListener("click", () => {
  const failed = state.lastFailed;
  if (!failed) return;
  state.lastFailed = null;
  hideBanner();
  submitMessage(failed.text, failed.memory);
});

document.getElementById("banner-close").addEventListener("click", hideBanner);

chat.classList.add("scripted");
setBusy(Boolean(state.activeRun));
connect();
scrollToEnd();
textBox.focus();
