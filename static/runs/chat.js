// The chat page over websocket protocol v1 (docs/protocol.md). Without this script the page
// still works: the form posts to the server, which waits for the reply and redirects back.
//
// Untrusted text (messages, titles, errors) is only ever set with textContent; the two
// exceptions are a message's `html`, which the server renders and sanitizes (markdown-it + nh3),
// and a reply's text while it streams, rendered here the same way (markdown-it + DOMPurify).

// base.html marks the page as scripted before it paints; this covers a policy that blocks inline scripts.
document.documentElement.classList.add("js");

const $ = (id) => document.getElementById(id);
const chat = $("chat");
const log = $("log");
const transcript = $("transcript");
const form = $("composer");
const textBox = $("text");
const sendButton = $("send");
const stopButton = $("stop");
const memoryBox = $("memory");
const memoryHelp = $("memory-help");
const forgetButton = $("forget");
const forgetDialog = $("forget-dialog");
const deleteButton = $("delete");
const downloadLink = $("download");
const shareLink = $("share");
const deleteDialog = $("delete-dialog");
const deleteForm = $("delete-form");
const renameButton = $("rename");
const actionsToggle = $("actions-toggle");
const actionsMenu = $("conversation-actions");
const renameDialog = $("rename-dialog");
const renameInput = $("rename-input");
const banner = $("banner");
const bannerText = $("banner-text");
const retryButton = $("retry");
const liveStatus = $("live-status");
const jumpButton = $("jump-latest");
const toast = $("toast");
const conversationField = $("conversation-field");
const conversationList = $("conversation-list");
const title = $("chat-title");
const searchForm = $("search-form");
const searchBox = $("search");
const searchError = $("search-error");
const listHeading = $("list-heading");
const showOlder = $("show-older");
const downloadAll = $("download-all");
const sidebarToggle = $("sidebar-toggle");
const sidebar = $("sidebar");
const backdrop = $("sidebar-backdrop");

const MEMORY_ON = "Memory on: the assistant remembers what you send here.";
const MEMORY_OFF = "Memory off: each message is answered on its own.";
const RETRYABLE = new Set(["backend_unavailable", "backend_error", "backend_timeout", "busy", "rate_limited", "connection", "internal_error"]);
const TITLE_CHARS = 60;
const NEAR_BOTTOM_PX = 96;
// A draft carried over the reload when the session changes in another tab (it may land on
// another conversation's page).
const DRAFT_KEY = "chat:draft";
// A draft per conversation in this tab: DRAFT_PREFIX + the conversation's id, or "new".
const DRAFT_PREFIX = "chat:draft:";

const state = {
  conversation: chat.dataset.conversation || null,
  activeRun: chat.dataset.activeRun || null,
  activeMode: null,
  lastSeq: 0,
  pending: null, // {client_id, text, memory}, {client_id, regenerate} or {client_id, continue}: a frame awaiting run.started
  mine: new Map(), // run id -> {text, memory}, {regenerate} or {continue}: the runs this tab started, for Retry
  lastFailed: null, // {text, memory}, {regenerate} or {continue}: what Retry sends again
  forgetting: false,
  renaming: null, // the conversation this tab asked to rename, for its "Renamed." note
  query: oneLine(searchBox.value), // what the conversation list is filtered by ("" for all)
  listing: null, // the AbortController of the list request under way
  resyncing: false, // a delta went missing: a snapshot is on its way
  socket: null,
  retryDelay: 500,
  reconnectTimer: null,
  leaving: false,
};

// The websocket, reconnecting by itself with backoff; every (re)connection re-watches.

function connect() {
  clearTimeout(state.reconnectTimer);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}${chat.dataset.wsPath}`);
  state.socket = socket;
  socket.addEventListener("open", () => {
    state.retryDelay = 500;
    chat.classList.remove("offline");
    if (banner.dataset.code === "connection" && !state.lastFailed) hideBanner();
    if (state.conversation) send({ type: "conversation.watch", conversation: state.conversation });
    if (state.pending && state.pending.queued) sendPending();
  });
  socket.addEventListener("message", (event) => {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return;
    }
    const handler = handlers[frame.type];
    if (handler) handler(frame);
  });
  socket.addEventListener("close", () => {
    if (state.socket !== socket || state.leaving) return;
    chat.classList.add("offline");
    if (state.pending && !state.pending.queued) {
      state.lastFailed = state.pending;
      if (sendsMessage(state.pending)) restoreDraft(state.pending.text);
      state.pending = null;
    }
    if (state.pending) {
      showBanner("Not connected. Your message will be sent as soon as the connection is back.", "connection");
    } else if (state.activeRun || state.lastFailed) {
      showBanner(
        state.lastFailed ? "Connection lost before your message was sent. Reconnecting…" : "Connection lost. Reconnecting…",
        "connection",
      );
    }
    setBusy();
    state.reconnectTimer = setTimeout(connect, state.retryDelay);
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

window.addEventListener("pagehide", () => { state.leaving = true; });
window.addEventListener("pageshow", (event) => {
  state.leaving = false;
  if (event.persisted) connect();
});
window.addEventListener("online", () => {
  if (!state.socket || state.socket.readyState === WebSocket.CLOSED) connect();
});

// Rendering. Every element below is built from text; only `message.html` and a streaming
// reply's markdown (renderStream) are parsed.

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const timeFormat = new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit" });
const dateTimeFormat = new Intl.DateTimeFormat([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
const fullFormat = new Intl.DateTimeFormat([], { dateStyle: "full", timeStyle: "short" });

function localizeTime(time) {
  const date = new Date(time.dateTime);
  if (Number.isNaN(date.getTime())) return;
  const today = new Date().toDateString() === date.toDateString();
  time.textContent = (today ? timeFormat : dateTimeFormat).format(date);
  time.title = fullFormat.format(date);
}

function badge(remembered) {
  const node = el("span", `badge ${remembered ? "remembered" : "stateless"}`, remembered ? "remembered" : "not remembered");
  node.title = remembered ? "Sent to the assistant's memory of this conversation" : "Answered on its own: not in the assistant's memory";
  return node;
}

// A small button of a message (Copy, Regenerate, Edit) or of a code block.
function labelledButton(className, label, visible, hint) {
  const button = el("button", className, visible);
  button.type = "button";
  button.setAttribute("aria-label", label);
  if (hint) button.title = hint;
  return button;
}

function messageElement(message) {
  const item = el("li", `message ${message.role}`);
  item.dataset.id = message.id;
  item.dataset.text = message.text;
  if (message.cut) item.dataset.cut = "true";
  const meta = el("div", "meta");
  meta.append(el("span", "role", message.role === "user" ? "You" : "Assistant"), badge(message.remembered));
  const time = el("time");
  time.dateTime = message.created_at;
  meta.append(time);
  if (message.status === "cancelled" || message.status === "failed") {
    item.classList.add(message.status);
    meta.append(el("span", "status", message.status === "cancelled" ? "stopped" : "failed"));
  }
  const actions = el("span", "actions");
  if (message.role === "assistant" && message.text) actions.append(labelledButton("copy link small", "Copy reply", "Copy"));
  if (message.role === "assistant") actions.append(feedbackButtons(message.feedback));
  meta.append(actions);
  item.append(meta);
  if (message.status === "failed" && message.error) item.append(el("p", "notice error-detail", message.error.message));
  const body = el("div", "body");
  body.innerHTML = message.html; // sanitized on the server
  item.append(body);
  // What the run says of the reply (cut at the length limit, a fresh memory) is a note on it,
  // not an error: it follows the text, where a cut reply stops.
  if (message.notice) item.append(el("p", "notice", message.notice));
  enhance(item);
  return item;
}

// Good reply / Bad reply, for the site's staff: pressed again, a rating is taken back. Their
// icons are the stylesheet's.
const RATINGS = [["good", "Good reply"], ["bad", "Bad reply"]];
function feedbackButtons(feedback) {
  const group = el("span", "feedback");
  for (const [rating, label] of RATINGS) {
    const button = labelledButton("rate link small", label, "", `${label}: tell the site's staff`);
    button.dataset.rating = rating;
    button.setAttribute("aria-pressed", String(feedback === rating));
    group.append(button);
  }
  return group;
}

// Times in the reader's zone, and on code blocks (of a saved message, or of a streaming reply's
// body) a header with the language and a copy button, and colours when highlight.js knows the
// language (it reads the code as text and escapes it; a block that names none stays plain).
function enhance(item) {
  item.querySelectorAll("time[datetime]").forEach(localizeTime);
  item.querySelectorAll(".body pre").forEach((pre) => {
    if (pre.parentElement.classList.contains("code-block")) return;
    const code = pre.querySelector("code");
    const language = code && [...code.classList].find((name) => name.startsWith("language-"))?.slice("language-".length);
    if (language && window.hljs?.getLanguage(language)) window.hljs.highlightElement(code);
    const wrapper = el("div", "code-block");
    const header = el("div", "code-header");
    header.append(el("span", "code-language", language || "code"));
    header.append(labelledButton("copy-code link small", "Copy code", "Copy code"));
    pre.replaceWith(wrapper);
    wrapper.append(header, pre);
  });
}

function nearBottom() {
  return log.scrollHeight - log.scrollTop - log.clientHeight < NEAR_BOTTOM_PX;
}

function scrollToEnd() {
  log.scrollTop = log.scrollHeight;
}

// The reader is "at the end" until they scroll up; a resize (a phone's keyboard, a rotated
// screen) keeps them there.
let pinnedToEnd = true;
log.addEventListener("scroll", () => {
  pinnedToEnd = nearBottom();
  jumpButton.hidden = pinnedToEnd;
}, { passive: true });
new ResizeObserver(() => { if (pinnedToEnd) scrollToEnd(); }).observe(log);

// Keeps the view pinned to the newest text only if the reader was already at the end; a reader
// who scrolled up gets a button back to it.
function keepingEnd(change) {
  const pinned = nearBottom();
  const result = change();
  if (pinned) scrollToEnd();
  else jumpButton.hidden = false;
  return result;
}

jumpButton.addEventListener("click", () => {
  scrollToEnd();
  jumpButton.hidden = true;
});

function removeEmptyState() {
  $("empty-state")?.remove();
}

function upsertMessage(message) {
  removeEmptyState();
  const existing = transcript.querySelector(`li[data-id="${CSS.escape(message.id)}"]`);
  const element = messageElement(message);
  if (existing) existing.replaceWith(element);
  else transcript.append(element);
  return element;
}

// A continuation goes on in the reply it continues: that reply leaves the transcript, and the
// run's streaming element, last as it was, shows its text first, as the saved reply will.
function takeContinuedReply(messageId) {
  const item = messageId && transcript.querySelector(`li.message[data-id="${CSS.escape(messageId)}"]`);
  if (!item) return "";
  item.remove();
  return item.dataset.text;
}

// The reply and its continuation joined as the server joins them (runs/services.py,
// reply_continued), so the saved reply reads as the streamed one did.
function replyContinued(text, more) {
  if (!text || !more || /\s$/.test(text) || /^[\s.,;:!?)\]}]/.test(more)) return text + more;
  return `${text} ${more}`;
}

// A reply is shown as it streams as the saved one will be: markdown-it with the server's
// settings (runs/rendering.py), sanitized by DOMPurify to the server's allow-list, so that a
// list or a code block takes its shape as it comes and the saved reply changes nothing. If
// either library failed to load, the text shows as plain text until the reply is saved.
const streamMarkdown = window.markdownit && window.DOMPurify?.isSupported
  ? window.markdownit("commonmark", { html: false, linkify: true, breaks: true }).enable(["table", "strikethrough", "linkify"])
  : null;
const STREAM_ATTRIBUTES = { a: ["href", "title"], code: ["class"], ol: ["start"] };
const STREAM_SANITIZE = {
  ALLOWED_TAGS: [
    "p", "br", "hr", "em", "strong", "del", "s", "code", "pre", "blockquote",
    "ul", "ol", "li", "a", "h1", "h2", "h3", "h4", "h5", "h6",
    "table", "thead", "tbody", "tr", "th", "td",
  ],
  ALLOWED_ATTR: [...new Set(Object.values(STREAM_ATTRIBUTES).flat())],
  ALLOWED_URI_REGEXP: /^(?:(?:https?|mailto):|[^a-z]|[a-z+.-]+(?:[^a-z+.\-:]|$))/i,
  RETURN_DOM_FRAGMENT: true,
};
if (streamMarkdown) {
  // Only an address written out with http, https or mailto is a link, as on the server.
  streamMarkdown.linkify.set({ fuzzyLink: false, fuzzyEmail: false, fuzzyIP: false });
  streamMarkdown.linkify.add("//", null).add("ftp:", null);
  // DOMPurify allows its attributes on every tag; the server, each only on its own.
  window.DOMPurify.addHook("uponSanitizeAttribute", (node, data) => {
    if (!STREAM_ATTRIBUTES[node.nodeName.toLowerCase()]?.includes(data.attrName)) data.keepAttr = false;
  });
  window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.nodeName === "A" && node.hasAttribute("href")) node.setAttribute("rel", "noopener noreferrer nofollow");
  });
}

// Each streaming reply by its body element: its text so far, and when and at what cost it was
// last rendered. The whole text is rendered again as it grows, about 3 ms for a thousand
// characters of markdown and 20 ms for sixteen thousand here, so a long reply's renders are
// spaced to take at most a fifth of the page's time; a short reply's come a word at a time.
const streams = new WeakMap();
const STREAM_RENDER_SHARE = 0.2;

function renderStream(body) {
  const stream = streams.get(body);
  const started = performance.now();
  stream.timer = 0;
  const text = replyContinued(stream.continues, stream.text);
  keepingEnd(() => {
    if (streamMarkdown && text.trim()) {
      const rendered = el("div", "body");
      rendered.append(window.DOMPurify.sanitize(streamMarkdown.render(text), STREAM_SANITIZE));
      enhance(rendered);
      keepSameStart(body, rendered);
    } else {
      // Without the libraries, plain text; empty, the paragraph shows the stylesheet's ellipsis.
      body.replaceChildren(el("p", "stream-text", text));
    }
  });
  stream.renderedAt = performance.now();
  stream.cost = stream.renderedAt - started;
}

// Puts `rendered`'s nodes in `shown`, keeping those at the start that are the same already. A
// reply grows at its end, so what comes before stays as it is: a link in it can be clicked, and
// its text selected, while the reply streams. The first node that differs, when it is the same
// element growing (the paragraph or the list being written) or text, is changed in place.
function keepSameStart(shown, rendered) {
  const fresh = [...rendered.childNodes];
  const old = [...shown.childNodes];
  let same = 0;
  while (same < fresh.length && same < old.length && old[same].isEqualNode(fresh[same])) same += 1;
  if (same < fresh.length && same < old.length) {
    const [before, after] = [old[same], fresh[same]];
    if (before.nodeType === Node.TEXT_NODE && after.nodeType === Node.TEXT_NODE) {
      before.data = after.data;
      same += 1;
    } else if (sameElement(before, after)) {
      keepSameStart(before, after);
      same += 1;
    }
  }
  for (const node of old.slice(same)) node.remove();
  shown.append(...fresh.slice(same));
}

// The same tag with the same attributes, whatever it holds.
function sameElement(one, other) {
  return one.nodeType === Node.ELEMENT_NODE && other.nodeType === Node.ELEMENT_NODE
    && one.tagName === other.tagName && one.attributes.length === other.attributes.length
    && [...one.attributes].every((attribute) => other.getAttribute(attribute.name) === attribute.value);
}

// `text` is what the run has said so far; a continuation's `continues` is the reply it goes on
// with, shown first.
function streamSet(body, text, continues) {
  const stream = streams.get(body) || { continues: "", text: "", renderedAt: 0, cost: 0, timer: 0 };
  streams.set(body, stream);
  stream.text = text;
  if (continues !== undefined) stream.continues = continues;
  if (stream.timer) return; // it renders the text as it is then
  const wait = stream.renderedAt + stream.cost / STREAM_RENDER_SHARE - performance.now();
  if (wait > 0) stream.timer = setTimeout(() => renderStream(body), wait);
  else renderStream(body);
}

function streamAdd(body, text) {
  streamSet(body, (streams.get(body)?.text || "") + text);
}

function streamBody(item) {
  return item.querySelector(".body");
}

function streamingElement(runId, remembered) {
  let item = transcript.querySelector(`li[data-run="${CSS.escape(runId)}"]`);
  if (!item) {
    removeEmptyState();
    item = el("li", "message assistant streaming");
    item.dataset.run = runId;
    item.setAttribute("aria-busy", "true");
    const meta = el("div", "meta");
    meta.append(el("span", "role", "Assistant"));
    if (remembered !== undefined) meta.append(badge(remembered));
    const typing = el("span", "typing");
    typing.append(el("i"), el("i"), el("i"), el("span", "visually-hidden", "answering"));
    meta.append(typing);
    const body = el("div", "body");
    item.append(meta, body);
    streamSet(body, "");
    transcript.append(item);
  }
  return item;
}

// A busy server sends a reply's tokens several to a frame (every CHAT_BATCH_DELTAS_MS, 100 ms
// by default). Shown as they come, that reply would jump a line at a time; instead a frame of
// several words is written out a word at a time over about the time until the next frame, so a
// reply reads the same at any load. A frame of one word shows at once, as does every frame with
// reduced motion or in a hidden tab; what is still being written shows at once when the next
// frame comes or the run ends.
const reducedMotion = window.matchMedia("(prefers-reduced-motion: reduce)");
const FRAME_GAP_MS = { first: 100, least: 30, most: 250 };
const writing = { body: null, words: [], every: 0, timer: 0, lastFrameAt: 0, gap: FRAME_GAP_MS.first };

function writingFlush() {
  clearTimeout(writing.timer);
  writing.timer = 0;
  if (writing.body && writing.words.length) {
    const { body, words } = writing;
    writing.words = [];
    streamAdd(body, words.join(""));
  }
}

function writingReset() {
  clearTimeout(writing.timer);
  Object.assign(writing, { body: null, words: [], timer: 0, lastFrameAt: 0 });
}

function writeNextWord() {
  const { body } = writing;
  const word = writing.words.shift();
  streamAdd(body, word);
  writing.timer = writing.words.length ? setTimeout(writeNextWord, writing.every) : 0;
}

function streamAppend(body, text) {
  const now = performance.now();
  if (writing.lastFrameAt) {
    writing.gap = Math.min(FRAME_GAP_MS.most, Math.max(FRAME_GAP_MS.least, now - writing.lastFrameAt));
  }
  writing.lastFrameAt = now;
  writingFlush();
  writing.body = body;
  // Each word with the spaces before it, and any trailing spaces: together, exactly `text`.
  const words = text.match(/\s*\S+|\s+$/g) || [];
  if (words.length < 2 || words.join("") !== text || reducedMotion.matches || document.hidden) {
    streamAdd(body, text);
    return;
  }
  // Done a little before the next frame is due.
  writing.every = (0.8 * writing.gap) / words.length;
  writing.words = words;
  writeNextWord();
}

function setBusy() {
  const streaming = Boolean(state.activeRun);
  stopButton.hidden = !streaming;
  sendButton.hidden = streaming;
  sendButton.disabled = state.pending !== null;
  chat.classList.toggle("streaming", streaming);
  placeMessageActions();
}

// Regenerate sits on the last reply (Continue too, when the length limit cut it), and Edit on
// each of the user's messages, while nothing streams or waits: the server's forms and links
// without JavaScript, these buttons with it.
function placeMessageActions() {
  const idle = Boolean(state.conversation && !state.activeRun && !state.pending && !transcript.querySelector(".editor"));
  const reply = transcript.lastElementChild;
  const lastExchange = Boolean(
    reply?.matches("li.message.assistant[data-id]") && reply.previousElementSibling?.matches("li.message.user[data-id]"),
  );
  offerAction(idle && lastExchange && reply.dataset.cut === "true" ? [reply] : [], ".continue", () =>
    labelledButton("continue link small", "Continue this reply", "Continue", "Ask the assistant to go on where its length limit cut this reply"));
  offerAction(idle && lastExchange ? [reply] : [], ".regenerate", () =>
    labelledButton("regenerate link small", "Regenerate this reply", "Regenerate", "Ask again: the new reply takes this one's place"));
  offerAction(idle ? [...transcript.querySelectorAll("li.message.user[data-id]")] : [], ".edit", () =>
    labelledButton("edit link small", "Edit your message", "Edit", "Change it and send it again: a new reply takes the place of the old one and of what came after"));
}

// Puts the action `selector` on each of `items`, and takes it off every other message.
function offerAction(items, selector, make) {
  transcript.querySelectorAll(selector).forEach((node) => {
    if (!items.includes(node.closest("li"))) {
      const hadFocus = node.contains(document.activeElement);
      node.remove();
      if (hadFocus) textBox.focus();
    }
  });
  for (const item of items) {
    if (!item.querySelector(selector)) item.querySelector(".meta .actions").append(make());
  }
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

let toastTimer = null;
function showToast(text) {
  toast.textContent = text;
  toast.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { toast.hidden = true; }, 5000);
}

function announce(text) {
  liveStatus.textContent = text;
}

function setMemory(enabled) {
  memoryBox.checked = enabled;
  memoryHelp.textContent = enabled ? MEMORY_ON : MEMORY_OFF;
}

// Every run of whitespace made one space, and trimmed: as the server does to titles and searches.
function oneLine(text) {
  return text.replace(/\s+/g, " ").trim();
}

function titleFrom(text) {
  const clean = oneLine(text);
  return clean.length <= TITLE_CHARS ? clean : `${clean.slice(0, TITLE_CHARS - 1).trimEnd()}…`;
}

function setConversation(conversation) {
  state.conversation = conversation.id;
  chat.dataset.conversation = conversation.id;
  conversationField.value = conversation.id;
  showTitle(conversation.title);
  setMemory(conversation.memory);
  setHasThread(conversation.has_thread);
  deleteButton.disabled = false;
  renameButton.disabled = false;
  downloadLink.href = `/c/${conversation.id}/download/`;
  downloadLink.hidden = false;
  shareLink.href = `/c/${conversation.id}/share/`;
  shareLink.hidden = false;
  actionsToggle.hidden = false;
  const path = `/c/${conversation.id}/`;
  if (location.pathname !== path) history.replaceState(null, "", path);
  const link = listConversation(conversation.id, conversation.title);
  conversationList.querySelectorAll("a[aria-current]").forEach((a) => a.removeAttribute("aria-current"));
  link.setAttribute("aria-current", "page");
}

function showTitle(name) {
  const shown = name || "Conversation";
  title.textContent = shown;
  title.title = shown;
  document.title = `${shown} · Chat`;
}

function conversationLink(id) {
  return conversationList.querySelector(`a[data-conversation="${CSS.escape(id)}"]`);
}

function markEmptyList() {
  const empty = !conversationList.children.length;
  if (empty) conversationList.append(el("li", "empty-list", state.query ? "No conversations match." : "No conversations yet."));
  // A filtered list cannot tell whether there is anything to download; unfiltered, older ones not
  // shown yet count too.
  if (!state.query) downloadAll.hidden = empty && showOlder.hidden;
}

function conversationItem(id, name, updated) {
  const item = el("li");
  item.dataset.updated = updated;
  const link = el("a");
  link.href = `/c/${id}/`;
  link.dataset.conversation = id;
  if (id === state.conversation) link.setAttribute("aria-current", "page");
  nameLink(link, name);
  item.append(link);
  return item;
}

// The conversation's link in the list, added at the top if it is not there yet.
function listConversation(id, name) {
  let link = conversationLink(id);
  if (!link) {
    conversationList.querySelector(".empty-list")?.remove();
    const item = conversationItem(id, name, new Date().toISOString());
    conversationList.prepend(item);
    link = item.firstElementChild;
    downloadAll.hidden = false;
  }
  nameLink(link, name);
  return link;
}

// News of a conversation elsewhere: while the list is filtered, one that does not show stays out
// unless its title matches (its messages are the server's to search).
function listConversationNews(id, name) {
  const shown = conversationLink(id);
  if (!shown && state.query && !(name || "").toLowerCase().includes(state.query.toLowerCase())) return;
  listConversation(id, name);
  bumpConversation(id);
}

// Searching and paging the list: the same JSON API as programs use.
async function loadList({ older = false } = {}) {
  state.listing?.abort();
  const listing = new AbortController();
  state.listing = listing;
  const params = new URLSearchParams();
  if (state.query) params.set("q", state.query);
  if (older) params.set("offset", showOlder.dataset.offset);
  let body = null;
  let problem = "";
  try {
    const response = await fetch(`/api/conversations/?${params}`, { signal: listing.signal, headers: { Accept: "application/json" } });
    body = await response.json().catch(() => null);
    if (!response.ok || !body) problem = body?.error?.message || "The list could not be loaded. Try again.";
  } catch {
    if (listing.signal.aborted) return; // a newer search took over
    problem = "The list could not be loaded. Check the connection and try again.";
  } finally {
    if (state.listing === listing) state.listing = null;
  }
  if (problem) {
    searchError.textContent = problem;
    searchError.hidden = false;
    return;
  }
  searchError.hidden = true;
  const items = body.conversations.filter((c) => !(older && conversationLink(c.id))).map((c) => conversationItem(c.id, c.title, c.updated_at));
  if (older) conversationList.append(...items);
  else conversationList.replaceChildren(...items);
  markEmptyList();
  listHeading.textContent = state.query ? `Matching “${state.query}”` : "Conversations";
  if (state.query && !older) {
    const found = body.conversations.length;
    const more = body.next_offset === null ? "" : " or more";
    announce(!found ? "No conversations match." : found === 1 ? "1 conversation matches." : `${found}${more} conversations match.`);
  }
  showOlder.hidden = body.next_offset === null;
  showOlder.dataset.offset = body.next_offset ?? "";
  params.set("offset", showOlder.dataset.offset);
  showOlder.href = `?${params}`;
}

let searchTimer = null;
searchBox.addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    const query = oneLine(searchBox.value);
    if (query === state.query) return;
    state.query = query;
    loadList();
  }, 250);
});
searchForm.addEventListener("submit", (event) => {
  event.preventDefault();
  clearTimeout(searchTimer);
  state.query = oneLine(searchBox.value);
  loadList();
});
searchBox.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && searchBox.value) {
    event.preventDefault();
    event.stopPropagation();
    searchBox.value = "";
    searchBox.dispatchEvent(new Event("input"));
  }
});
showOlder.addEventListener("click", (event) => {
  event.preventDefault();
  loadList({ older: true });
});

function nameLink(link, name) {
  link.textContent = name || "Untitled";
  link.title = name || "Untitled";
}

function setHasThread(hasThread) {
  chat.dataset.hasThread = hasThread ? "true" : "false";
  const hadFocus = document.activeElement === forgetButton;
  forgetButton.disabled = !hasThread;
  if (hadFocus && !hasThread) textBox.focus();
}

// Deleted (in another tab, window or program): gone from the list; if this page shows it,
// the page becomes a new chat, keeping whatever is in the message box.
function dropConversation(id) {
  conversationLink(id)?.parentElement.remove();
  markEmptyList();
  if (id !== state.conversation) return;
  state.conversation = null;
  state.activeRun = null;
  state.activeMode = null;
  state.lastSeq = 0;
  state.lastFailed = null;
  chat.dataset.conversation = "";
  conversationField.value = "";
  title.textContent = "New chat";
  title.title = "New chat";
  document.title = "Chat";
  setHasThread(false);
  deleteButton.disabled = true;
  renameButton.disabled = true;
  downloadLink.hidden = true;
  downloadLink.removeAttribute("href");
  shareLink.hidden = true;
  shareLink.removeAttribute("href");
  closeActions(false);
  actionsToggle.hidden = true;
  if (renameDialog.open) renameDialog.close();
  transcript.replaceChildren();
  if (emptyState) transcript.append(emptyState.cloneNode(true));
  history.replaceState(null, "", $("new-chat").getAttribute("href"));
  showBanner("This conversation was deleted. What you send next starts a new chat.", "deleted");
  setBusy();
}

// The conversation moves to the top of the list when something is said in it.
function bumpConversation(id) {
  const link = conversationLink(id);
  if (!link) return;
  link.parentElement.dataset.updated = new Date().toISOString();
  if (link.parentElement !== conversationList.firstElementChild) conversationList.prepend(link.parentElement);
  else groupList(); // it stays first, but it may be today's now
}

// The list in groups by when each conversation last changed, in the reader's days: the first
// conversation of each group carries the group's name, which the stylesheet shows above it.
const monthFormat = new Intl.DateTimeFormat([], { month: "long", year: "numeric" });

function listGroup(updated) {
  const date = new Date(updated);
  if (Number.isNaN(date.getTime())) return "";
  const day = new Date(date);
  const today = new Date();
  day.setHours(0, 0, 0, 0);
  today.setHours(0, 0, 0, 0);
  const daysAgo = Math.round((today - day) / 86_400_000); // rounded: a day can be 23 or 25 hours
  if (daysAgo <= 0) return "Today";
  if (daysAgo === 1) return "Yesterday";
  if (daysAgo < 7) return "Previous 7 days";
  if (daysAgo < 30) return "Previous 30 days";
  return monthFormat.format(date);
}

function groupList() {
  let previous = "";
  for (const item of conversationList.children) {
    const group = item.dataset.updated ? listGroup(item.dataset.updated) : "";
    if (group && group !== previous) item.dataset.group = group;
    else delete item.dataset.group;
    if (group) previous = group;
  }
}
new MutationObserver(groupList).observe(conversationList, { childList: true });
groupList();

// Frames from the server.

const handlers = {
  "conversation.snapshot"(frame) {
    if (state.conversation && frame.conversation.id !== state.conversation) return;
    state.resyncing = false;
    setConversation(frame.conversation);
    const pinned = nearBottom();
    log.setAttribute("aria-busy", "true");
    writingReset();
    transcript.replaceChildren();
    frame.messages.forEach(upsertMessage);
    if (!frame.messages.length && emptyState) transcript.append(emptyState.cloneNode(true));
    state.activeRun = frame.active_run ? frame.active_run.run : null;
    state.lastSeq = 0;
    if (frame.active_run) {
      const lastUser = [...frame.messages].reverse().find((m) => m.role === "user");
      const item = streamingElement(frame.active_run.run, lastUser ? lastUser.remembered : undefined);
      streamSet(streamBody(item), frame.active_run.text, takeContinuedReply(frame.active_run.continues));
      state.lastSeq = frame.active_run.seq;
    }
    log.removeAttribute("aria-busy");
    if (pinned) scrollToEnd();
    if (state.forgetting) {
      state.forgetting = false;
      showToast("Forgotten. The transcript stays; the next remembered message starts a new memory.");
      if (document.activeElement === document.body || document.activeElement === forgetButton) textBox.focus();
    }
    setBusy();
  },
  "run.started"(frame) {
    const mine = state.pending !== null && frame.client_id === state.pending.client_id;
    if (!mine && frame.conversation !== state.conversation) return;
    if (mine) {
      const { text, memory, regenerate } = state.pending;
      state.mine.set(frame.run, state.pending.continue ? { continue: true } : regenerate ? { regenerate, text } : { text, memory });
      state.pending = null;
      if (frame.conversation !== state.conversation) {
        setConversation({ id: frame.conversation, title: titleFrom(frame.user_message.text), memory: frame.mode === "thread", has_thread: false });
      }
    }
    const remembered = frame.mode === "thread";
    if (remembered) setHasThread(true);
    bumpConversation(frame.conversation);
    keepingEnd(() => {
      for (const id of frame.replaces || []) transcript.querySelector(`li[data-id="${CSS.escape(id)}"]`)?.remove();
      upsertMessage(frame.user_message);
      state.activeRun = frame.run;
      state.activeMode = frame.mode;
      state.lastSeq = 0;
      writingReset();
      const item = streamingElement(frame.run, remembered);
      if (frame.continues) streamSet(streamBody(item), "", takeContinuedReply(frame.continues));
    });
    if (mine) scrollToEnd();
    announce("The assistant is answering.");
    setBusy();
  },
  // Said in another tab, window or program: the conversation goes to the top of the list.
  "conversation.active"(frame) {
    listConversationNews(frame.conversation, frame.title);
  },
  // Renamed here or anywhere else: the list keeps its order, only the name changes.
  "conversation.renamed"(frame) {
    const link = conversationLink(frame.conversation);
    if (link) nameLink(link, frame.title);
    if (frame.conversation !== state.conversation) return;
    showTitle(frame.title);
    if (state.renaming === frame.conversation) {
      state.renaming = null;
      showToast("Renamed.");
    }
  },
  // Rated in this tab or anywhere else: every tab shows the rating.
  "message.feedback"(frame) {
    if (frame.conversation !== state.conversation) return;
    const item = transcript.querySelector(`li[data-id="${CSS.escape(frame.message)}"]`);
    item?.querySelectorAll("button.rate").forEach((button) => {
      button.setAttribute("aria-pressed", String(button.dataset.rating === frame.feedback));
    });
  },
  "conversation.deleted"(frame) {
    if (!state.leaving) dropConversation(frame.conversation);
  },
  "run.delta"(frame) {
    if (frame.run !== state.activeRun || frame.seq <= state.lastSeq || state.resyncing) return;
    if (frame.seq > state.lastSeq + 1) {
      // A delta went missing on the way: the snapshot has the reply so far, and what follows it.
      if (send({ type: "conversation.watch", conversation: state.conversation })) state.resyncing = true;
      return;
    }
    state.lastSeq = frame.seq;
    streamAppend(streamBody(streamingElement(frame.run)), frame.text);
  },
  "run.completed"(frame) {
    finishRun(frame, "The assistant answered.");
  },
  "run.cancelled"(frame) {
    finishRun(frame, "Stopped. The reply so far is kept.");
  },
  "run.failed"(frame) {
    const sent = state.mine.get(frame.run);
    finishRun(frame, "The reply failed.");
    // The message is saved; only its reply failed: Retry asks again in its place (or, for a
    // continuation, asks again to go on).
    if (sent) state.lastFailed = sent.continue ? { continue: true } : { regenerate: true };
    const error = frame.error || { code: "backend_error", message: "The reply failed." };
    showBanner(error.message, error.code);
  },
  "session.ended"(frame) {
    leaveSession(frame.reason);
  },
  error(frame) {
    if (frame.code === "signed_out") {
      leaveSession("signed_out");
      return;
    }
    if (state.pending && frame.client_id === state.pending.client_id) {
      state.lastFailed = state.pending;
      if (sendsMessage(state.pending)) restoreDraft(state.pending.text);
      state.pending = null;
    }
    state.forgetting = false;
    state.renaming = null;
    state.resyncing = false;
    setBusy();
    showBanner(frame.message, frame.code);
  },
};

// Signed in or out in another tab: this page belongs to the old session. Come back as the new
// one (the same conversation after a sign-in, which adopted it; a new chat after a sign-out),
// keeping what was typed or on its way.
function leaveSession(reason) {
  if (state.leaving) return; // on its way out already (this tab signed out)
  state.leaving = true;
  clearTimeout(state.reconnectTimer);
  const draft = textBox.value.trim() ? textBox.value : state.pending?.text;
  const comingBack = reason === "signed_in" || reason === "renewed";
  try {
    // Signed out, the drafts of the account's conversations go; the one in hand comes along.
    if (!comingBack) draftsClear();
    if (draft) sessionStorage.setItem(DRAFT_KEY, draft);
  } catch {
    // Storage refused (private mode, quota): the page still follows the session.
  }
  if (!comingBack) {
    showBanner("You were signed out: in another tab, or by a password change elsewhere.", "session");
    location.replace($("new-chat").href);
    return;
  }
  const what = reason === "renewed" ? "You changed your password in another tab." : "You signed in in another tab.";
  showBanner(`${what} Opening your account…`, "session");
  // The answer with the session's new cookie may not have reached the browser yet: a reload
  // with the old cookie would start a new visitor session over it. Sign-in and a password
  // change renew the CSRF cookie in that same answer, so its change says the new one is there.
  const started = Date.now();
  (function reloadOnceRenewed() {
    if (csrfCookie() !== pageCsrf) location.reload();
    else if (Date.now() - started < 10_000) setTimeout(reloadOnceRenewed, 100);
    else showBanner(`${what} Reload this page to go on.`, "session");
  })();
}

function csrfCookie() {
  const cookie = document.cookie.split("; ").find((pair) => pair.startsWith("csrftoken="));
  return cookie ? cookie.slice("csrftoken=".length) : "";
}
const pageCsrf = csrfCookie();

function finishRun(frame, announcement) {
  const placeholder = transcript.querySelector(`li[data-run="${CSS.escape(frame.run)}"]`);
  if (placeholder?.contains(writing.body)) writingReset(); // its saved text takes its place
  keepingEnd(() => {
    if (frame.message) {
      const element = messageElement(frame.message);
      if (placeholder) placeholder.replaceWith(element);
      else if (frame.run === state.activeRun && !transcript.querySelector(`li[data-id="${CSS.escape(frame.message.id)}"]`)) {
        transcript.append(element);
      }
    } else {
      placeholder?.remove();
    }
  });
  state.mine.delete(frame.run);
  if (frame.run === state.activeRun) {
    const stopHadFocus = document.activeElement === stopButton;
    state.activeRun = null;
    state.activeMode = null;
    announce(announcement);
    setBusy();
    // The Stop button just disappeared: don't leave focus nowhere.
    if (stopHadFocus || document.activeElement === document.body) textBox.focus();
  }
}

// What the user does.

function clientId() {
  return crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(36).slice(2)}`;
}

function restoreDraft(text) {
  if (!textBox.value.trim()) {
    textBox.value = text;
    autosize();
    draftSave();
  }
}

// What is typed survives a reload of this tab, kept per conversation (a new chat has its own)
// in the tab's session storage, until it is sent.
function draftKeyFor(conversation) {
  return `${DRAFT_PREFIX}${conversation || "new"}`;
}

function draftsClear() {
  Object.keys(sessionStorage).filter((key) => key.startsWith(DRAFT_PREFIX)).forEach((key) => sessionStorage.removeItem(key));
}

// Signing out here: the drafts of this tab go with the session, and the word of it that this
// tab's socket may get first carries nothing over.
$("sign-out")?.addEventListener("submit", () => {
  state.leaving = true;
  try {
    draftsClear();
  } catch {
    // No storage: nothing kept.
  }
});

function draftSave() {
  try {
    const key = draftKeyFor(state.conversation);
    if (textBox.value.trim()) sessionStorage.setItem(key, textBox.value);
    else sessionStorage.removeItem(key);
  } catch {
    // No storage (private mode, quota): the box still works, without the safety net.
  }
}

function submitMessage(text, memory) {
  state.pending = { client_id: clientId(), text, memory, queued: true };
  state.lastFailed = null;
  hideBanner();
  setBusy();
  // Not connected yet (the page just opened, or the connection is coming back): the message
  // waits in the box and goes as soon as the socket opens.
  if (!sendPending()) announce("Connecting… your message will be sent in a moment.");
}

// Asks again from the user's message `messageId` (by default the last), in place of its reply
// and what came after; with `text`, that message is edited to say it first.
function regenerateReply(text, messageId) {
  if (state.activeRun || state.pending || !state.conversation) return;
  state.pending = { client_id: clientId(), regenerate: true, queued: true };
  if (text !== undefined) state.pending.text = text;
  if (messageId !== undefined) state.pending.message = messageId;
  state.lastFailed = null;
  hideBanner();
  setBusy();
  textBox.focus();
  if (!sendPending()) announce("Connecting… the reply will be regenerated in a moment.");
}

// Asks the assistant to go on with the last reply, which its length limit cut.
function continueReply() {
  if (state.activeRun || state.pending || !state.conversation) return;
  state.pending = { client_id: clientId(), continue: true, queued: true };
  state.lastFailed = null;
  hideBanner();
  setBusy();
  textBox.focus();
  if (!sendPending()) announce("Connecting… the reply will go on in a moment.");
}

// A chat.send: its text came from the message box (a regeneration's or a continuation's did not).
function sendsMessage(pending) {
  return !pending.regenerate && !pending.continue;
}

function sendPending() {
  const pending = state.pending;
  const frame = pending.continue
    ? { type: "chat.continue", conversation: state.conversation, client_id: pending.client_id }
    : pending.regenerate
      ? { type: "chat.regenerate", conversation: state.conversation, client_id: pending.client_id, message: pending.message, text: pending.text }
      : { type: "chat.send", text: pending.text, memory: pending.memory, conversation: state.conversation, client_id: pending.client_id };
  if (!send(frame)) return false;
  pending.queued = false;
  if (sendsMessage(pending) && textBox.value.trim() === pending.text) {
    textBox.value = "";
    autosize();
    draftSave();
  }
  return true;
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = textBox.value.trim();
  if (!text) {
    textBox.focus();
    return;
  }
  const limit = Number(chat.dataset.maxChars);
  if (text.length > limit) {
    showBanner(`A message can be at most ${limit.toLocaleString()} characters; this one has ${text.length.toLocaleString()}.`, "text_too_long");
    return;
  }
  if (state.activeRun || state.pending) return;
  submitMessage(text, memoryBox.checked);
});

textBox.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing && !event.altKey && !event.ctrlKey && !event.metaKey) {
    event.preventDefault();
    form.requestSubmit();
  }
});

// A message box as tall as its text (up to the height its CSS allows).
function autosize(box = textBox) {
  box.style.height = "auto";
  box.style.height = `${box.scrollHeight + 2}px`;
}
textBox.addEventListener("input", () => {
  autosize();
  draftSave();
});

document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape" || event.defaultPrevented || forgetDialog.open || deleteDialog.open || renameDialog.open) return;
  if (actionsMenu.classList.contains("open")) {
    closeActions(true);
    event.preventDefault();
  } else if (document.body.classList.contains("sidebar-open")) {
    closeSidebar(true);
    event.preventDefault();
  } else if (state.activeRun) {
    event.preventDefault();
    stopRun();
  }
});

function stopRun() {
  if (state.activeRun && send({ type: "chat.cancel", run: state.activeRun })) announce("Stopping…");
}

stopButton.addEventListener("click", stopRun);

memoryBox.addEventListener("change", () => {
  setMemory(memoryBox.checked);
  announce(memoryBox.checked ? MEMORY_ON : MEMORY_OFF);
  if (state.conversation) send({ type: "conversation.memory", conversation: state.conversation, enabled: memoryBox.checked });
});

forgetButton.addEventListener("click", () => {
  if (!state.conversation) return;
  forgetDialog.returnValue = "";
  forgetDialog.showModal();
});

forgetDialog.addEventListener("close", () => {
  if (forgetDialog.returnValue !== "forget" || !state.conversation) return;
  if (send({ type: "conversation.forget", conversation: state.conversation })) state.forgetting = true;
  else showBanner("Not connected, so nothing was forgotten. Reconnecting…", "connection");
});

renameButton.addEventListener("click", () => {
  if (!state.conversation) return;
  renameDialog.returnValue = "";
  renameInput.value = title.textContent;
  renameDialog.showModal();
  renameInput.select();
});

// Cancel is not a submit button, so Enter in the name field renames.
$("rename-cancel").addEventListener("click", () => renameDialog.close());

renameDialog.addEventListener("close", () => {
  if (renameDialog.returnValue !== "rename" || !state.conversation) return;
  const frame = { type: "conversation.rename", conversation: state.conversation, title: renameInput.value };
  if (send(frame)) state.renaming = state.conversation;
  else showBanner("Not connected, so the name was not changed. Reconnecting…", "connection");
});

// Delete posts the dialog's form: the server deletes, then opens a new chat with a note.
deleteButton.addEventListener("click", () => {
  if (!state.conversation) return;
  deleteForm.action = `/c/${state.conversation}/delete/`;
  deleteDialog.showModal();
});

// This tab is on its way to the page the server answers with: the socket's news is stale.
deleteForm.addEventListener("submit", (event) => {
  if (event.submitter?.formMethod !== "dialog") state.leaving = true;
});

retryButton.addEventListener("click", () => {
  const failed = state.lastFailed;
  if (!failed) return;
  hideBanner();
  if (failed.continue) continueReply();
  else if (failed.regenerate) regenerateReply(failed.text);
  else submitMessage(failed.text, failed.memory);
  textBox.focus();
});

$("banner-close").addEventListener("click", () => {
  hideBanner();
  textBox.focus();
});

transcript.addEventListener("click", (event) => {
  const rate = event.target.closest("button.rate");
  if (rate) {
    event.preventDefault(); // the form is for pages without JavaScript
    const pressed = rate.getAttribute("aria-pressed") === "true";
    const frame = { type: "message.feedback", conversation: state.conversation, message: rate.closest("li.message").dataset.id, feedback: pressed ? null : rate.dataset.rating };
    if (!send(frame)) showToast("Not connected: rate it again in a moment.");
  } else if (event.target.closest(".continue button, button.continue")) {
    event.preventDefault(); // the form is for pages without JavaScript
    continueReply();
  } else if (event.target.closest(".regenerate button, button.regenerate")) {
    event.preventDefault(); // the form and the link are for pages without JavaScript
    regenerateReply();
  } else if (event.target.closest(".edit")) {
    event.preventDefault();
    editMessage(event.target.closest("li.message"));
  }
});

// Edit in place: the message becomes a box with its text; sent, it is asked again as edited,
// and what came after it leaves (the box says how much). Esc or Cancel leaves it as it was.
function editMessage(item) {
  if (state.activeRun || state.pending || transcript.querySelector(".editor")) return;
  const editor = el("form", "editor");
  let after = 0;
  for (let next = item.nextElementSibling; next; next = next.nextElementSibling) {
    if (next.matches("li.message")) after += 1;
  }
  const box = el("textarea");
  box.value = item.dataset.text;
  box.maxLength = Number(chat.dataset.maxChars);
  box.setAttribute("aria-label", "Edit your message");
  const cancel = el("button", "secondary small", "Cancel");
  cancel.type = "button";
  const save = el("button", "small", "Send");
  save.type = "submit";
  const buttons = el("div", "editor-actions");
  buttons.append(cancel, save);
  editor.append(box);
  if (after > 1) {
    const warning = el("p", "hint editor-note", `Sending replaces the ${after} messages after this one.`);
    warning.id = `editor-note-${item.dataset.id}`;
    box.setAttribute("aria-describedby", warning.id);
    editor.append(warning);
  }
  editor.append(buttons);
  item.classList.add("editing");
  item.append(editor);
  placeMessageActions();
  const close = () => {
    editor.remove();
    item.classList.remove("editing");
    placeMessageActions();
  };
  const cancelEdit = () => {
    close();
    item.querySelector(".edit")?.focus();
  };
  box.addEventListener("input", () => autosize(box));
  box.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      cancelEdit();
    } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      editor.requestSubmit();
    }
  });
  cancel.addEventListener("click", cancelEdit);
  editor.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = box.value.trim();
    if (!text) {
      box.focus();
      return;
    }
    if (state.activeRun || state.pending) {
      showBanner("A reply is on its way. Send your edit once it is done.", "busy");
      return;
    }
    close();
    regenerateReply(text, item.dataset.id);
  });
  autosize(box);
  box.focus();
  box.setSelectionRange(box.value.length, box.value.length);
}

// Copy buttons on replies and on code blocks.
transcript.addEventListener("click", async (event) => {
  const button = event.target.closest("button.copy, button.copy-code");
  if (!button) return;
  const text = button.classList.contains("copy")
    ? button.closest("li.message").dataset.text
    : button.closest(".code-block").querySelector("pre").textContent;
  const label = button.textContent;
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
    announce("Copied to the clipboard.");
  } catch {
    button.textContent = "Copy failed";
  }
  setTimeout(() => { button.textContent = label; }, 1500);
});

// The conversation list becomes a drawer on narrow screens.
const narrow = window.matchMedia("(max-width: 760px)");

function openSidebar() {
  document.body.classList.add("sidebar-open");
  sidebarToggle.setAttribute("aria-expanded", "true");
  backdrop.hidden = false;
  sidebar.querySelector("a[aria-current], a")?.focus();
}

function closeSidebar(returnFocus) {
  document.body.classList.remove("sidebar-open");
  sidebarToggle.setAttribute("aria-expanded", "false");
  backdrop.hidden = true;
  if (returnFocus) sidebarToggle.focus();
}

sidebarToggle.addEventListener("click", () => {
  if (document.body.classList.contains("sidebar-open")) closeSidebar(true);
  else openSidebar();
});
backdrop.addEventListener("click", () => closeSidebar(true));
narrow.addEventListener("change", () => closeSidebar(false));

// On narrow screens the conversation's actions are a menu behind "⋯"; elsewhere, inline.

function openActions() {
  actionsMenu.classList.add("open");
  actionsToggle.setAttribute("aria-expanded", "true");
  actionsMenu.querySelector("button:not(:disabled), a:not([hidden])")?.focus();
}

function closeActions(returnFocus) {
  if (!actionsMenu.classList.contains("open")) return;
  actionsMenu.classList.remove("open");
  actionsToggle.setAttribute("aria-expanded", "false");
  if (returnFocus) actionsToggle.focus();
}

actionsToggle.addEventListener("click", () => {
  if (actionsMenu.classList.contains("open")) closeActions(true);
  else openActions();
});
// Captured, so focus is back on "⋯" before the action runs: a dialog it opens returns focus
// there when it closes, not to a button hidden with the menu.
actionsMenu.addEventListener("click", (event) => {
  if (event.target.closest("button, a")) closeActions(true);
}, true);
// Focus or a tap anywhere else closes it.
for (const type of ["focusin", "click"]) {
  document.addEventListener(type, (event) => {
    if (!actionsMenu.contains(event.target) && !actionsToggle.contains(event.target)) closeActions(false);
  });
}
narrow.addEventListener("change", () => closeActions(false));

// Start.

const emptyState = $("empty-state")?.cloneNode(true);
try {
  restoreDraft(sessionStorage.getItem(DRAFT_KEY) || sessionStorage.getItem(draftKeyFor(state.conversation)) || "");
  sessionStorage.removeItem(DRAFT_KEY);
} catch {
  // No storage: nothing was carried over.
}
transcript.querySelectorAll("li.message").forEach(enhance);
setBusy();
autosize();
connect();
scrollToEnd();
// Phones would pop up the keyboard over the transcript; elsewhere the message box is ready.
if (window.matchMedia("(pointer: fine)").matches) textBox.focus();
// Enter pressed in the message box before this script ran (chat.html held it back): sent now.
window.chatStarted = true;
document.removeEventListener("keydown", window.chatEarlyEnter);
if (window.chatEarlyEnterPressed) form.requestSubmit();
